"""The original entry point, kept: the same command as `toolkit get-transfer-layer`.

    python scripts/get_transfer_layer.py IMAGE_PATH OUTPUT_PATH [options]
"""

from image_toolkit.cli.extract import get_transfer_layer

if __name__ == "__main__":
    get_transfer_layer(prog_name="get_transfer_layer.py")
