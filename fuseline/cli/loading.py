"""Finding the workflow a user names as ``MODULE:WORKFLOW``."""

from __future__ import annotations

import importlib
import os
import sys

import typer

from ..workflow.workflow import Workflow


def load_workflow(spec: str) -> Workflow:
    """Import ``module:attribute`` (from the current folder too) and check it is a Workflow.

    Mistakes in the spec are usage errors (exit code 2) with one clear line;
    an exception raised while importing the user's module is shown as one
    line too, naming the module.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise typer.BadParameter(f"{spec!r} is not MODULE:WORKFLOW (for example: my_app.flows:etl)")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise typer.BadParameter(
                f"cannot import module {module_name!r} (looked in {cwd} and the Python path)"
            ) from None
        raise typer.BadParameter(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:
        raise typer.BadParameter(f"importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    target: object = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise typer.BadParameter(f"module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not isinstance(target, Workflow):
        raise typer.BadParameter(f"{spec!r} is a {type(target).__name__}, not a fuseline Workflow")
    return target
