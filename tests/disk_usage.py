"""How much disk the test run wrote: the peak and what it leaves behind (issue 27).

Two figures, printed at the end of every run:
- pytest's temporary folder (basetemp): its largest size during the run, walked every
  ``POLL_S`` seconds, and its size after pytest's own clean-up (``tmp_path_retention_policy``);
- the filesystem that holds it: the largest drop of its free space below the value at the start
  (``os.statvfs``), which also sees writes outside basetemp (Ray's session logs, caches, other
  processes on a shared machine).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

POLL_S = 2.0
MIB = 1024 * 1024


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files under ``root`` (0 when it is gone); files vanishing mid-walk are skipped."""
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


class DiskMonitor:
    """Samples basetemp's size and the filesystem's free space in a daemon thread until ``stop``."""

    def __init__(self, basetemp: Path, poll_s: float = POLL_S) -> None:
        self.basetemp = basetemp
        self.poll_s = poll_s
        self.free_at_start = free_bytes(basetemp)
        self.peak_tree = 0
        self.peak_fs_drop = 0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def sample(self) -> None:
        self.peak_tree = max(self.peak_tree, tree_bytes(self.basetemp))
        self.peak_fs_drop = max(self.peak_fs_drop, self.free_at_start - free_bytes(self.basetemp.parent))

    def _run(self) -> None:
        while not self._stopped.wait(self.poll_s):
            self.sample()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def summary(self) -> str:
        left = tree_bytes(self.basetemp)
        fs_left = self.free_at_start - free_bytes(self.basetemp.parent)
        return (
            f"disk: pytest temporary folder {self.basetemp} peak {self.peak_tree / MIB:.0f} MiB, "
            f"left behind {left / MIB:.0f} MiB; filesystem peak {self.peak_fs_drop / MIB:.0f} MiB "
            f"written, {fs_left / MIB:.0f} MiB still used at the end"
        )
