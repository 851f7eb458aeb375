"""The shape of the code, checked: layers without cycles, one owner of upload rows, typed
storage capabilities, short functions (docs/design.md, "Modules and layers")."""

from __future__ import annotations

import ast
from collections import defaultdict
from functools import cache
from pathlib import Path

APP = Path(__file__).resolve().parents[2] / "app"

#: What each package may import from the others (besides itself). Neutral vocabulary
#: (core, errors, settings) is allowed below everything that is not itself neutral.
NEUTRAL = {"core", "errors", "settings"}
ALLOWED: dict[str, set[str]] = {
    "core": {"errors"},
    "errors": set(),
    "settings": set(),
    "db": NEUTRAL,
    "storage": NEUTRAL | {"db"},
    "uploads": NEUTRAL | {"db", "storage"},
    "auth": NEUTRAL | {"db"},
    "ops": NEUTRAL | {"db", "storage", "uploads", "auth"},
    "http": NEUTRAL | {"db", "storage", "uploads", "auth", "ops"},
    "ingest": set(),
}


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "app"


@cache
def _trees() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text()) for path in sorted(APP.rglob("*.py"))}


def _module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package_imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for path, tree in _trees().items():
        source = _package_of(_module_name(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name == "app" or name.startswith("app."):
                    target = _package_of(name)
                    if target not in {source, "app"}:
                        edges[source].add(target)
    return edges


def test_each_layer_imports_only_the_layers_below_it() -> None:
    edges = _package_imports()
    breaches = {
        f"{source} -> {target}"
        for source, allowed in ALLOWED.items()
        for target in edges.get(source, set())
        if target not in allowed
    }
    assert not breaches


def test_packages_import_each_other_without_cycles() -> None:
    edges = _package_imports()
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        assert node not in visiting, " -> ".join([*path, node])
        if node in done:
            return
        visiting.add(node)
        for target in sorted(edges.get(node, set())):
            visit(target, [*path, node])
        visiting.discard(node)
        done.add(node)

    for package in sorted(edges):
        visit(package, [])


def test_no_function_is_longer_than_80_lines() -> None:
    long = [
        f"{path.relative_to(APP.parent)}:{node.lineno} {node.name} ({length} lines)"
        for path, tree in _trees().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := (node.end_lineno or node.lineno) - node.lineno + 1) > 80
    ]
    assert not long


def test_only_the_upload_repository_writes_upload_rows_or_lease_columns() -> None:
    lease_columns = {"lock_token", "lock_holder", "lock_expires_at"}
    owner = APP / "db" / "uploads.py"
    writers: list[str] = []
    for path, tree in _trees().items():
        if path in {owner, APP / "db" / "models.py"}:
            continue
        for node in ast.walk(tree):
            writes_rows = (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"update", "insert", "delete"}
                and any(isinstance(arg, ast.Name) and arg.id == "Upload" for arg in node.args)
            )
            touches_lease = isinstance(node, ast.Attribute) and node.attr in lease_columns
            if writes_rows or touches_lease:
                writers.append(f"{path.relative_to(APP.parent)}:{node.lineno}")
    assert not writers


def test_storage_capabilities_are_never_looked_up_by_name() -> None:
    lookups = [
        f"{path.relative_to(APP.parent)}:{node.lineno}"
        for path, tree in _trees().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in {"getattr", "hasattr"}
        and node.args
        and "backend" in ast.unparse(node.args[0]).lower()
    ]
    assert not lookups
