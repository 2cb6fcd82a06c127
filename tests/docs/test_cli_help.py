"""`camserve --help` says what camserve does and lists every command module; none is skipped."""

from __future__ import annotations

import pkgutil

import pytest

import camserve.commands
from camserve import cli


def test_every_command_module_is_registered() -> None:
    modules = {info.name for info in pkgutil.iter_modules(camserve.commands.__path__)}
    registered = {module.__name__.rsplit(".", 1)[1] for module in cli.COMMANDS}
    assert registered == modules


def test_help_says_what_camserve_does_and_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "Class Activation Maps" in out and "serve explanations over gRPC" in out
    for command in ("export", "explain", "serve", "batch", "eval", "bench", "default-model"):
        assert f"\n    {command} " in out
