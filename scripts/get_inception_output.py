"""The original entry point, kept: the same command as `toolkit get-inception-output`.

    python scripts/get_inception_output.py IMAGE_PATH OUTPUT_PATH [options]
"""

from image_toolkit.cli.extract import get_inception_output

if __name__ == "__main__":
    get_inception_output(prog_name="get_inception_output.py")
