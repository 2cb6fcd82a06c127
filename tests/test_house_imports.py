"""House rule: imports run down the floors of ARCHITECTURE.md ("Dependency direction"), never back up.

The walk reads every module's imports with ``ast`` (function-level and ``TYPE_CHECKING`` imports
too: they are dependencies all the same), maps module names to folders as pyproject.toml's
``package-dir`` does (``camserve.export`` = export/, ``camserve.kernels`` = kernels/, ``camserve.service``
= service/, ``camserve.v1`` / ``camserve.inference`` = proto/), puts each module on its floor, and fails
on any circle between floors: a reader (or an import tool that does not know ``package-dir``) would
see a circle between folders.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {
    "camserve": "camserve",
    "camserve.export": "export",
    "camserve.kernels": "kernels",
    "camserve.service": "service",
    "camserve.v1": "proto/camserve/v1",
    "camserve.inference": "proto/camserve/inference",
}
# Module prefix -> floor (the longest prefix wins); everything else under camserve/ is "core".
FLOORS = {
    "camserve.errors": "base",
    "camserve.defaults": "base",
    "camserve.logs": "base",
    "camserve.kernels": "kernels",
    "camserve.export": "export",
    "camserve.service": "service",
    "camserve.v1": "proto",
    "camserve.inference": "proto",
    "camserve.commands": "entry",
    "camserve.cli": "entry",
    "camserve.default_model": "entry",  # trains and exports the default model
    "camserve.default_model.data": "core",  # its synthetic digits (torch only): the eval benchmark's data
}
# The one known upward edge: ``Explainer()`` with no model builds the embedded default model on first
# use (lazily imported), which exports it.
KNOWN = {("camserve.explainer", "camserve.default_model")}


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    for package, folder in sorted(PACKAGE_DIRS.items(), key=lambda item: -len(item[1])):
        if relative.is_relative_to(folder):
            parts = [p for p in relative.relative_to(folder).parts if p != "__init__"]
            return ".".join([package, *parts])
    raise ValueError(path)


def modules() -> dict[str, Path]:
    found = {}
    for folder in set(PACKAGE_DIRS.values()):
        for path in (ROOT / folder).rglob("*.py"):
            found[module_name(path)] = path
    return found


def floor(module: str) -> str:
    best = max(
        (prefix for prefix in FLOORS if module == prefix or module.startswith(prefix + ".")),
        key=len,
        default=None,
    )
    return "core" if best is None else FLOORS[best]


def imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The camserve modules ``module`` imports (``from a import b``: a.b when that is a module, else a)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        parts = name.split(".")
        while parts and ".".join(parts) not in known:
            parts.pop()
        if parts and parts[0] == "camserve":
            found.add(".".join(parts))
    return found


def floor_edges() -> dict[tuple[str, str], set[str]]:
    known = modules()
    edges: dict[tuple[str, str], set[str]] = {}
    for module, path in known.items():
        for target in imports(module, path, known):
            if (module, target) in KNOWN:
                continue
            a, b = floor(module), floor(target)
            if a != b:
                edges.setdefault((a, b), set()).add(f"{module} -> {target}")
    return edges


def circles(edges: dict[tuple[str, str], set[str]]) -> list[list[str]]:
    """Every floor pair (a, b) with a path a -> b and b -> a, as the import lines that close it."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    return [sorted(lines) for (a, b), lines in sorted(edges.items()) if reaches(b, a)]


def test_the_walk_maps_package_dirs_and_sees_the_floors():
    known = modules()
    assert module_name(ROOT / "service/security.py") == "camserve.service.security"
    assert module_name(ROOT / "kernels/__init__.py") == "camserve.kernels"
    assert "camserve.wire" in imports("camserve.client", known["camserve.client"], known)
    edges = floor_edges()
    # the edges the floors allow are there, so the walk sees imports at all
    assert {("service", "core"), ("export", "core"), ("entry", "service"), ("core", "kernels")} <= set(edges)
    assert circles({("a", "b"): {"x"}, ("b", "c"): {"y"}, ("c", "a"): {"z"}, ("c", "d"): {"w"}}) == [
        ["x"],
        ["y"],
        ["z"],
    ]


def test_no_circle_between_floors():
    found = circles(floor_edges())
    assert found == [], "imports that climb a floor:\n" + "\n".join(line for lines in found for line in lines)


def test_clients_do_not_import_the_server():
    known = modules()
    for client in ("camserve.client", "camserve.loadgen.clients", "camserve.commands.explain"):
        assert not {m for m in imports(client, known[client], known) if floor(m) == "service"}, client
