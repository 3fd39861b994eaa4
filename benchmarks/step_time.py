"""Script entry: ``python benchmarks/step_time.py [options]`` is ``python -m jaxbp bench [options]``."""

import sys

from jaxbp.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
