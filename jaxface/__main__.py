import sys

from jaxface.cli import run

sys.exit(run())
