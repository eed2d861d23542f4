"""The ``fuseline`` command line (typer). Imported only by the console script."""

from .app import app, main

__all__ = ["app", "main"]
