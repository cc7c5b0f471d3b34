"""``python -m tracediff``: the same command line as the ``tracediff`` console script."""
import sys

from .cli import console_main

sys.exit(console_main())
