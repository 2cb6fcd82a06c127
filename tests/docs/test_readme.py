"""The README's first screen runs as written, and every relative link of README.md and docs/*.md
resolves (to a file, and to a heading when it names one)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from camserve.config import CamserveConfig
from camserve.default_model import default_model_dir
from tests.service.service_helpers import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOC_PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
DOCUMENTED_ADDRESS = "127.0.0.1:50051"
COMMAND_TIMEOUT_S = 300
VENV_BIN = ".venv/bin/"
BOOTSTRAP = "bash scripts/bootstrap.sh"


def first_screen_commands() -> list[str]:
    """The shell lines of the bash blocks above the README's first ``## `` heading, comments removed."""
    text = README.read_text().split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = " ".join(shlex.split(line, comments=True))
            if command:
                lines.append(command)
    return lines


def test_the_first_screen_shows_the_four_quick_start_commands() -> None:
    commands = first_screen_commands()
    assert len(commands) == 4, commands
    assert commands[0] == f"{BOOTSTRAP} && {VENV_BIN}camserve serve"
    assert commands[1] == f"{BOOTSTRAP} --test-tools && {VENV_BIN}python -m pytest"
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith(commands[1])
    assert all(c.startswith(f"{VENV_BIN}camserve explain") for c in commands[2:])


def _as_run_here(command: str, address: str) -> list[str]:
    """``command``'s argv with .venv/bin/camserve run by this interpreter (the suite runs inside the
    .venv that bootstrap.sh made) and the documented address replaced by the test server's."""
    argv = shlex.split(command.replace(DOCUMENTED_ADDRESS, address), comments=True)
    assert argv[0] == f"{VENV_BIN}camserve", command
    return [sys.executable, "-m", "camserve.cli", *argv[1:]]


def test_the_quick_start_commands_run_as_written(tmp_path: Path) -> None:
    serve, _suite, *explains = first_screen_commands()
    # "bash scripts/bootstrap.sh && ..." set up the .venv this suite runs in (CI runs it first), so
    # the server starts from this interpreter; and the second line is this suite itself. Port 0
    # instead of the documented 50051, which another server on the machine may hold.
    serve_argv = _as_run_here(serve.removeprefix(f"{BOOTSTRAP} && "), DOCUMENTED_ADDRESS)
    # The first `camserve serve` on a fresh clone also builds the default model; build it here first
    # (same cache) so that the server's start-up wait measures serving, not the export.
    default_model_dir(cache_dir=CamserveConfig.load().runtime.cache_dir)
    server = ServerProcess([*serve_argv, "--port", "0"], tmp_path / "serve.log")
    try:
        for command in explains:
            done = subprocess.run(
                _as_run_here(command, server.address),
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT_S,
            )
            assert done.returncode == 0, f"{command}\n{done.stderr}"
            assert "wrote" in done.stdout
    finally:
        server.stop()

    local, remote = np.load(tmp_path / "result.npz"), np.load(tmp_path / "remote.npz")
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert local["gradcam"].shape[0] == 4 and "gradcam++" in local.files
    # The same built-in samples, in process and through the server: the same predictions and maps.
    np.testing.assert_array_equal(remote["target_ids"], local["target_ids"])
    np.testing.assert_allclose(remote["logits"], local["logits"], atol=1e-5)
    np.testing.assert_allclose(remote["gradcam"], local["gradcam"], atol=1e-4)


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # '#' lines in code are not headings
    headings = {github_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}
    return headings | set(
        re.findall(r'<a id="([^"]+)"></a>', text)
    )  # explicit anchors, as GitHub renders them


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [link for link in links if not re.match(r"[a-z]+:", link)]


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for link in relative_links(page):
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(f"{link}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{link}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, broken


def test_the_readme_is_a_short_front_page() -> None:
    assert len(README.read_text().splitlines()) <= 250
    assert not (ROOT / "docs" / "readme").exists()  # the details live once, in docs/*.md
