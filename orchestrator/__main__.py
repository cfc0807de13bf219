"""`python -m orchestrator` is `mmdemo`."""

from orchestrator.cli.main import entry

entry()
