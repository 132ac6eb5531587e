"""The original entry point, kept: the same command as `toolkit get-inception-output`.

    python scripts/get_inception_output.py IMAGE_PATH OUTPUT_PATH [options]
"""

import sys
from pathlib import Path

# Run from a checkout, the repository root is not on the path unless the toolkit is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.extract import get_inception_output  # noqa: E402

if __name__ == "__main__":
    get_inception_output(prog_name="get_inception_output.py")
