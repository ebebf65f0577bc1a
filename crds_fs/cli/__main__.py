"""`python -m crds_fs.cli` runs the command line (used by tests to start subprocesses)."""

from . import main

main()
