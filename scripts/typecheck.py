"""Type-check the camserve distribution with mypy: ``python scripts/typecheck.py`` (exit 1 on errors).

camserve maps folders to sub-packages (``export/`` is ``camserve.export``, ``service/`` is
``camserve.service``: pyproject's ``package-dir``), which the editable install resolves with an
import hook that mypy cannot see. So this script lays the package out as Python sees it -- a tree of
symlinks under build/typecheck/, built from ``package-dir`` -- runs ``mypy -p camserve`` on it with
the ``[tool.mypy]`` settings of pyproject.toml, and prints the errors with the repository's paths.
Extra arguments go to mypy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT / "build" / "typecheck"
PACKAGE = "camserve"


def link_tree() -> Path:
    """build/typecheck/camserve/... : every ``package-dir`` entry linked at its dotted place. Only
    what is missing or stale changes, so runs at the same time see the same tree."""
    package_dir: dict[str, str] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ]
    top = TREE / PACKAGE
    wanted = {
        top / entry.name: entry
        for entry in (ROOT / package_dir[PACKAGE]).iterdir()
        if entry.name != "__pycache__"
    }
    for name, folder in package_dir.items():
        if name != PACKAGE:
            wanted[top.joinpath(*name.split(".")[1:])] = ROOT / folder
    top.mkdir(parents=True, exist_ok=True)
    for link in top.iterdir():
        if link not in wanted or not link.is_symlink() or link.readlink() != wanted[link]:
            link.unlink()
    for link, target in wanted.items():
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=target.is_dir())
    return TREE


def repository_paths(text: str, tree: Path) -> str:
    """mypy names camserve/export/api.py (in the link tree); show the repository's export/api.py."""
    pattern = re.compile(rf"^{PACKAGE}/[^\s:]+", flags=re.M)
    return pattern.sub(lambda m: str((tree / m.group(0)).resolve().relative_to(ROOT)), text)


def main(argv: list[str]) -> int:
    tree = link_tree()
    env = {**os.environ, "MYPYPATH": str(tree)}
    config = ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(ROOT / ".mypy_cache")]
    done = subprocess.run(
        [sys.executable, "-m", "mypy", *config, "-p", PACKAGE, *argv],
        cwd=tree,  # not the repository root, where ./camserve alone would shadow the link tree
        env=env,
        capture_output=True,
        text=True,
    )
    sys.stdout.write(repository_paths(done.stdout, tree))
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
