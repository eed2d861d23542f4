"""Reading fuseline's source with ``ast``: which functions call what, and what is imported.

Names are resolved through the module's imports, so ``from time import time
as now; now()`` is found as ``time.time`` and ``from datetime import
datetime; datetime.now()`` as ``datetime.datetime.now``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "fuseline"


@dataclass(frozen=True)
class Call:
    path: str  # relative to the repository, e.g. "fuseline/broker/ids.py"
    function: str  # the enclosing function's qualified name ("<module>" at top level)
    name: str  # the resolved dotted name of what is called
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.function}() calls {self.name}()"


def python_files(*roots: Path) -> Iterator[Path]:
    for root in roots:
        if root.is_file():
            yield root
        else:
            yield from sorted(root.rglob("*.py"))


def relative(path: Path) -> str:
    return path.resolve().relative_to(PACKAGE.parent).as_posix()


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> the dotted name it stands for, from every import in the module."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def calls_in_source(source: str, path: str = "<string>") -> list[Call]:
    tree = ast.parse(source)
    aliases = _aliases(tree)
    found: list[Call] = []

    def visit(node: ast.AST, scope: list[str]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, [*scope, child.name])
                continue
            if isinstance(child, ast.Call):
                name = _dotted(child.func, aliases)
                if name is not None:
                    found.append(Call(path, ".".join(scope) or "<module>", name, child.lineno))
            visit(child, scope)

    visit(tree, [])
    return found


def calls_in(path: Path) -> list[Call]:
    return calls_in_source(path.read_text(), relative(path))


def imports_in_source(source: str) -> set[str]:
    """Every module imported: ``import``, ``from ... import``, ``__import__("x")``, ``import_module("x")``."""
    tree = ast.parse(source)
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id in ("__import__", "import_module"))
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            modules.add(node.args[0].value)
    return modules
