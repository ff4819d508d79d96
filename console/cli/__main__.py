"""``python -m console.cli``: the same as ``rounds``."""

import sys

from console.cli import main

if __name__ == "__main__":
    sys.exit(main())
