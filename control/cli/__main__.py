"""`python -m control.cli`: the `poolmta` command line without the console script."""

import sys

from .main import main

sys.exit(main())
