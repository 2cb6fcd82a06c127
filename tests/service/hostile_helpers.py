"""Helpers of the hostile-load tests: the server's memory and CPU time read from /proc, a peak-RSS
sampler, raw-bytes calls that bypass the stubs' serializers, and big all-zero PNGs."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
from PIL import Image

MIB = 1024 * 1024
_RSS = re.compile(r"^VmRSS:\s+(\d+) kB", re.M)


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux /proc)."""
    match = _RSS.search(Path(f"/proc/{pid}/status").read_text())
    assert match, f"no VmRSS for pid {pid}"
    return int(match.group(1)) * 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far (all its threads)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRss:
    """Samples a process's RSS every ``interval_s`` in a thread while the block runs; ``peak`` and
    ``baseline`` (at entry) in bytes."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self._stop.wait(self.interval_s)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def __enter__(self) -> PeakRss:
        self.baseline = rss_bytes(self.pid)
        self.peak = self.baseline
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def zero_png(width: int, height: int) -> bytes:
    """An all-black RGB PNG: a few hundred kB on the wire, ``width * height`` pixels decoded."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((height, width, 3), np.uint8), mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def raw_unary(channel: grpc.Channel, method: str, payload: bytes, **kwargs: object) -> bytes:
    """Call ``method`` with ``payload`` as the request's bytes, whatever they are."""
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    return call(payload, **kwargs)


def raw_stream(
    channel: grpc.Channel, method: str, payloads: list[bytes], **kwargs: object
) -> Iterator[bytes]:
    """A bidirectional stream sending ``payloads`` as raw request bytes."""
    call = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
    return call(iter(payloads), **kwargs)
