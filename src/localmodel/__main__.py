"""`python -m localmodel` is the `localmodel` command."""

from localmodel.cli import main

main()
