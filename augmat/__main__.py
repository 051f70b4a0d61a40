"""``python -m augmat`` runs the CLI."""

from .cli import main

main()
