"""The original entry point, kept: the same command as `toolkit get-transfer-layer`.

    python scripts/get_transfer_layer.py IMAGE_PATH OUTPUT_PATH [options]
"""

import sys
from pathlib import Path

# Run from a checkout, the repository root is not on the path unless the toolkit is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.extract import get_transfer_layer  # noqa: E402

if __name__ == "__main__":
    get_transfer_layer(prog_name="get_transfer_layer.py")
