"""Progress of a batch job: a tqdm bar (images/s, ETA) on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("camserve.batch")
LOG_EVERY_S = 10.0


class Progress:
    def __init__(self, total: int | None, already_done: int, enabled: bool = True) -> None:
        self.total = total
        self.already_done = already_done
        self.rows = 0
        self.errors = 0
        self.start = time.monotonic()
        self._last_log = self.start
        self._arrivals: list[tuple[float, int]] = []  # (time, images done) as each shard landed
        self._bar: Any = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="img", desc="camserve batch", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, rows: int, errors: int) -> None:
        self.rows += rows
        self.errors += errors
        self._arrivals.append((time.monotonic(), self.rows + self.errors))
        if self._bar is not None:
            self._bar.update(rows + errors)
            self._bar.set_postfix(errors=self.errors)
            return
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.info("%s", self.line())

    def line(self) -> str:
        done = self.rows + self.errors
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = done / elapsed
        text = f"{done} images ({self.errors} failed) in {elapsed:.1f} s, {rate:.1f} images/s"
        if self.total:
            left = self.total - done
            text += f", {left} left" + (f", ETA {left / rate:.0f} s" if rate > 0 else "")
        return text

    @property
    def images_per_second(self) -> float:
        return (self.rows + self.errors) / max(time.monotonic() - self.start, 1e-9)

    @property
    def steady_images_per_second(self) -> float:
        """Images/s over the second half of the shards: without the workers' start-up (model
        loading, Ray actors), what a long job runs at. The overall rate with fewer than 4 shards."""
        if len(self._arrivals) < 4:
            return self.images_per_second
        (start, before), (end, after) = self._arrivals[len(self._arrivals) // 2 - 1], self._arrivals[-1]
        return (after - before) / max(end - start, 1e-9)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
