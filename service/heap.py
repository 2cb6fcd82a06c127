"""Giving freed heap memory back to the system after calls that carried big requests.

A refused call's request often lives on in a reference cycle (the abort's exception, its traceback,
the handler's frame) until Python's cyclic collector happens to run, and the buffers gRPC core received
it in stay in glibc's arenas after they are freed: six refused 24 MiB health requests left +143 MiB
resident (issue 26). So some time after a call whose request was at least ``TRIM_AFTER_BYTES`` ended,
a thread runs ``gc.collect()`` and then glibc's ``malloc_trim`` (every arena's free pages back to the
system), at most once per ``min_interval_s``; a collection costs ~0.1 s of the GIL in a served
process, which big requests pay at most once a second.
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
from collections.abc import Callable

TRIM_AFTER_BYTES = 1 << 20


class HeapTrimmer:
    """``note_request(size)`` from the parser of every request message, ``call_ended()`` when a call
    ends; a trim follows within ``min_interval_s`` of a call's end when a big request came in."""

    def __init__(self, min_interval_s: float = 1.0) -> None:
        self.min_interval_s = min_interval_s
        self.trims = 0
        self._big_requests = 0
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._malloc_trim = _libc_malloc_trim()

    def note_request(self, size: int) -> None:
        if size >= TRIM_AFTER_BYTES:
            self._big_requests += 1

    def call_ended(self) -> None:
        if self._big_requests == 0 or self._malloc_trim is None:
            return
        self._big_requests = 0
        self._wanted.set()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="camserve-heap-trim", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        assert self._malloc_trim is not None
        while True:
            self._wanted.wait()
            time.sleep(self.min_interval_s)  # coalesce: the buffers of calls ending meanwhile go too
            self._wanted.clear()
            gc.collect()
            self._malloc_trim(0)
            self.trims += 1


def _libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library is not glibc."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL("libc.so.6").malloc_trim
        return trim
    except (OSError, AttributeError):
        return None


#: The server's one trimmer (the interceptors feed it).
TRIMMER = HeapTrimmer()
