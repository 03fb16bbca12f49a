"""Run the command line as `python -m maskcheck`."""

import sys

from maskcheck.cli import main

if __name__ == "__main__":
    sys.exit(main())
