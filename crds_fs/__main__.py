"""`python -m crds_fs` runs the command line."""

from .cli import main

main()
