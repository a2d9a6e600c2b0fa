"""`python -m control.cli.demo`: `poolmta demo` without the console script."""

import sys

from .main import main

sys.exit(main())
