"""Suite-wide hooks: the disk the run wrote, printed at its end (tests/disk_usage.py)."""

from __future__ import annotations

import pytest

from tests.disk_usage import DiskMonitor

_monitor_key = pytest.StashKey[DiskMonitor]()


def pytest_sessionstart(session: pytest.Session) -> None:
    monitor = DiskMonitor(session.config._tmp_path_factory.getbasetemp())  # type: ignore[attr-defined]
    monitor.start()
    session.config.stash[_monitor_key] = monitor


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    # runs after pytest_sessionfinish, i.e. after pytest removed basetemp on a green run
    monitor = config.stash.get(_monitor_key, None)
    if monitor is None:
        return
    monitor.sample()
    monitor.stop()
    terminalreporter.write_line(monitor.summary())
