"""`python -m orchestrator` is `mmdemo`."""

import sys

from orchestrator.cli.main import main

sys.exit(main())
