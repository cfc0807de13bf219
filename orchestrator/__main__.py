"""`python -m orchestrator` is `mmdemo`."""

import sys

from orchestrator.cli import main

sys.exit(main())
