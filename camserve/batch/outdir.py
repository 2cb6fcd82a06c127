"""The output directory of a batch job: Parquet shards, the errors table and ``manifest.json``.

Layout::

    OUT/manifest.json                        what produced the maps and how they are encoded
    OUT/part-RRRRR-SSSSSS.parquet            one row per explained image (run R, shard S)
    OUT/errors/part-RRRRR-SSSSSS.parquet     id, path, message of the images that failed

Each file is written under a hidden temporary name and renamed into place, errors before rows, so
a run killed at any moment leaves only whole shards; ids in either table count as done on resume.

One job at a time owns OUT: it holds an exclusive lock on ``OUT/.camserve-batch.lock`` (flock; the
kernel releases it when the process ends, however it ends), which says the owner's pid and host.
A disk that refuses a write (full, read-only, quota, I/O error) raises StorageError.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from camserve.errors import InvalidArgumentError, StorageError
from camserve.files import write_atomic

MANIFEST = "manifest.json"
FORMAT = "camserve-batch/1"
ERRORS_DIR = "errors"
SHARD_GLOB = "part-*.parquet"
_SHARD_NAME = re.compile(r"^part-(\d+)-(\d+)\.parquet$")
_TMP_PREFIX = ".tmp-"
LOCK = ".camserve-batch.lock"
#: errno values that mean the disk, not the arguments: the job ends with StorageError (exit 3).
_STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO, errno.EFBIG}


def shard_name(run: int, index: int) -> str:
    return f"part-{run:05d}-{index:06d}.parquet"


def map_column(method: str) -> str:
    return f"map_{method}"


def png_column(method: str) -> str:
    return f"png_{method}"


class OutputDir:
    """One job's OUT directory: refusal of a different job, done ids, atomic shard files."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.errors_path = self.path / ERRORS_DIR

    @contextlib.contextmanager
    def owned(self) -> Iterator[None]:
        """Hold OUT for this job while the block runs: created if needed, locked against any other
        ``camserve batch`` (InvalidArgumentError naming the owner when one holds it)."""
        self._check_writable()
        path = self.path / LOCK
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise _write_failure(exc, path) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 4096, 0).decode("utf-8", "replace")
                raise InvalidArgumentError(
                    "--out",
                    f"{self.path} is in use by another camserve batch job ({_owner(owner)}); "
                    "wait for it to end or use another --out",
                ) from None
            me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(me).encode(), 0)
            except OSError as exc:
                raise _write_failure(exc, path) from None
            yield
        finally:
            os.close(fd)  # releases the lock

    def prepare(self, job: dict[str, Any], overwrite: bool) -> None:
        """Create OUT (or check it is writable), refuse a different job's output unless ``overwrite``
        (which deletes it), remove temporary files a killed run left, write the manifest's job."""
        self._check_writable()
        existing = self.read_manifest()
        if existing is not None and existing.get("job") != job and not overwrite:
            raise InvalidArgumentError(
                "--out",
                f"{self.path} holds maps of another job ({_first_difference(existing.get('job'), job)}); "
                "use a new --out or pass --overwrite to replace them",
            )
        if existing is None and self.shard_files() and not overwrite:
            raise InvalidArgumentError(
                "--out", f"{self.path} has Parquet shards but no {MANIFEST}; pass --overwrite to replace them"
            )
        if overwrite and (existing is None or existing.get("job") != job):
            self._clear()
        for leftover in [*self.path.glob(_TMP_PREFIX + "*"), *self.errors_path.glob(_TMP_PREFIX + "*")]:
            leftover.unlink(missing_ok=True)
        self.errors_path.mkdir(exist_ok=True)

    def read_manifest(self) -> dict[str, Any] | None:
        path = self.path / MANIFEST
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError("--out", f"{path} is not valid JSON ({exc})") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        data = json.dumps(manifest, indent=2).encode()
        _write_atomic(self.path / MANIFEST, lambda fh: fh.write(data))

    def shard_files(self) -> list[Path]:
        return sorted(self.path.glob(SHARD_GLOB))

    def error_files(self) -> list[Path]:
        return sorted(self.errors_path.glob(SHARD_GLOB))

    def done_ids(self) -> set[str]:
        """Ids in the rows and errors tables: skipped by a re-run."""
        import pyarrow.parquet as pq

        done: set[str] = set()
        for path in [*self.shard_files(), *self.error_files()]:
            done.update(pq.read_table(path, columns=["id"]).column(0).to_pylist())
        return done

    def next_run(self) -> int:
        """1 + the highest run number in the shard names: new shards never replace old ones."""
        runs = [
            int(m.group(1))
            for p in [*self.shard_files(), *self.error_files()]
            if (m := _SHARD_NAME.match(p.name))
        ]
        return max(runs, default=0) + 1

    def counts(self) -> dict[str, int]:
        import pyarrow.parquet as pq

        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in self.shard_files())
        errors = sum(pq.ParquetFile(p).metadata.num_rows for p in self.error_files())
        return {"rows": rows, "errors": errors, "shards": len(self.shard_files())}

    def write_shard(self, name: str, rows: Any, errors: Any | None) -> None:
        """Write the errors table (if any) then the rows table of one shard, each atomically; when
        the rows fail, the errors go too (a shard is on disk whole or not at all)."""
        if errors is not None and errors.num_rows:
            self._write_table(self.errors_path / name, errors)
        if rows.num_rows:
            try:
                self._write_table(self.path / name, rows)
            except BaseException:
                self.remove_shard(name)
                raise

    def remove_shard(self, name: str) -> None:
        """Delete shard ``name`` (rows and errors): its ids are then not done, a re-run explains them."""
        (self.path / name).unlink(missing_ok=True)
        (self.errors_path / name).unlink(missing_ok=True)

    def _write_table(self, path: Path, table: Any) -> None:
        import pyarrow.parquet as pq

        _write_atomic(path, lambda fh: pq.write_table(table, fh))

    def _check_writable(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise InvalidArgumentError("--out", f"{self.path} exists and is not a directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(prefix=_TMP_PREFIX, dir=self.path)
            probe.close()
        except OSError as exc:
            if exc.errno in _STORAGE_ERRNOS:
                raise _write_failure(exc, self.path) from None
            raise InvalidArgumentError(
                "--out", f"cannot write to {self.path} ({exc.strerror or exc})"
            ) from None

    def _clear(self) -> None:
        for path in [*self.shard_files(), *self.error_files(), self.path / MANIFEST]:
            path.unlink(missing_ok=True)


def _write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Atomic write under the hidden prefix that resume and cleanup recognise; a disk that refuses
    it raises StorageError (and leaves no partial file)."""
    try:
        write_atomic(path, write, prefix=_TMP_PREFIX)
    except OSError as exc:  # whatever the errno: OUT itself refused the write
        raise _write_failure(exc, path) from None


def _write_failure(exc: OSError, path: Path) -> StorageError:
    name = errno.errorcode.get(exc.errno or 0, "error")
    return StorageError(f"--out: cannot write {path}: {exc.strerror or exc} ({name})")


def _owner(text: str) -> str:
    try:
        owner = json.loads(text)
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner["started"])))
        return f"pid {int(owner['pid'])} on {owner['host']}, since {started}"
    except (ValueError, KeyError, TypeError):
        return "owner unknown"


def _first_difference(old: Any, new: Any, where: str = "") -> str:
    """'methods: ['gradcam'] -> ['cam']': the first setting that differs, for the refusal message."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else key)
    return f"{where or 'job'}: {old!r} -> {new!r}"
