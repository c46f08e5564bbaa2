"""``python -m fastopt <command>``: the ``fastopt`` command (see :mod:`fastopt.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m fastopt"))
