"""`python -m dataplane.reports parse FILE... [--json]` (see `dataplane.reports.cli`)."""

import sys

from .cli import main

sys.exit(main())
