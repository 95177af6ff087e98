"""A durable local spool for records that could not reach Redis.

One append-only file of lines ``<crc32 hex> <json>\\n``, fsynced after each append, so a record
the worker has spooled survives a crash or a restart. Each line keeps everything needed to send
the record again exactly as it was made: the user, the model, the tokens, the request id, the
per-call price if any, and the instant (``at``), which fixes the UTC month it counts in even if it
is replayed in the next month.

Replay (planned by ``quota._replay``, driven by the clients, which own the I/O) works on a claimed file:

1. under the lock, ``<spool>`` is renamed to ``<spool>.replaying``; new records go to a fresh
   ``<spool>`` meanwhile, so the replay never races an append;
2. records are read in order, in batches; after each batch is acknowledged by Redis its end
   offset is written (atomically) to ``<spool>.replaying.pos``, so a replay cut short resumes
   after the last acknowledged record instead of sending it again;
3. when every record is sent the claimed file and its offset file are removed.

A crash mid-write leaves a torn last line: the next append starts a new line first, and the reader
skips any line whose checksum or JSON is bad, copying it to ``<spool>.bad`` for a human. Records
that Redis refuses for good (a model removed from the price table) go to ``<spool>.dead``.

Several processes may share one spool path: appends and claims take an ``flock`` on
``<spool>.lock``; a process that finds another one replaying leaves the replay to it.

The spool holds who spent what: every file is created 0600 and every directory 0700, every file is
opened with O_NOFOLLOW (a symbolic link planted at a spool path is refused, never written
through), and a spool directory that other users can write (``/tmp`` itself) is refused at start
with a ``ConfigError``: any local user could replace or link the files there. A private
subdirectory of ``/tmp`` (ours, not group- or world-writable) is fine.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import stat
import threading
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ._errors import ConfigError

log = logging.getLogger("quota.spool")

# Version 2 (issue 12) adds "cin"/"cwr" (cached input and cache-write tokens). A line without cache
# tokens is still written as version 1, which a worker of an older release can replay too; both read.
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One record waiting for Redis. ``at`` is an aware datetime: the instant the call was counted."""

    user: str
    model_id: str
    input_tokens: int
    output_tokens: int
    request_id: str
    estimated: bool
    at: datetime
    cost_nano: int
    price: Mapping[str, str] | None = None
    purpose: str | None = None  # issue 15; a line without "purpose" (written before) reads as None
    cached_input_tokens: int = 0  # issue 12: parts of input_tokens priced at the cache rates
    cache_write_tokens: int = 0

    def to_line(self) -> bytes:
        data: dict[str, Any] = {
            "v": 1,
            "rid": self.request_id,
            "user": self.user,
            "model": self.model_id,
            "in": self.input_tokens,
            "out": self.output_tokens,
            "est": self.estimated,
            "at": self.at.isoformat(),
            "cost_nano": self.cost_nano,
            "price": dict(self.price) if self.price is not None else None,
        }
        if self.purpose is not None:  # left out when None: such a line is what older versions wrote
            data["purpose"] = self.purpose
        if self.cached_input_tokens or self.cache_write_tokens:
            data["cin"], data["cwr"] = self.cached_input_tokens, self.cache_write_tokens
            data["v"] = FORMAT_VERSION
        body = json.dumps(
            data,
            separators=(",", ":"),
            sort_keys=True,
            ensure_ascii=True,
        ).encode("ascii")
        return b"%08x %s\n" % (zlib.crc32(body), body)

    @classmethod
    def from_line(cls, line: bytes) -> SpoolEntry:
        """Parse one line (with its newline); ValueError when it is torn or corrupt."""
        if not line.endswith(b"\n"):
            raise ValueError("torn line (no newline)")
        crc, sep, body = line[:-1].partition(b" ")
        if not sep or len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
            raise ValueError("checksum mismatch")
        data = json.loads(body)
        if data.get("v") not in READ_VERSIONS:
            raise ValueError(f"unknown spool format {data.get('v')!r}")
        at = datetime.fromisoformat(data["at"])
        if at.tzinfo is None:
            raise ValueError("naive timestamp")
        return cls(
            data["user"],
            data["model"],
            int(data["in"]),
            int(data["out"]),
            data["rid"],
            bool(data["est"]),
            at,
            int(data["cost_nano"]),
            data.get("price"),
            data.get("purpose"),
            int(data.get("cin", 0)),
            int(data.get("cwr", 0)),
        )


class Claim:
    """A claimed batch of spooled records being replayed, in order. Not thread-safe; one replayer."""

    def __init__(self, spool: Spool, lock_fd: int) -> None:
        self.spool = spool
        self._lock_fd = lock_fd
        self.path = spool.replaying_path
        self._file = os.fdopen(_open(self.path, os.O_RDONLY), "rb")  # closed in release()
        self.offset = spool._read_pos()
        self._file.seek(self.offset)
        self.sent = 0

    def batch(self, size: int) -> list[tuple[SpoolEntry, int]]:
        """The next ``size`` good records with the file offset just after each."""
        out: list[tuple[SpoolEntry, int]] = []
        while len(out) < size:
            line = self._file.readline()
            if not line:
                break
            end = self._file.tell()
            try:
                out.append((SpoolEntry.from_line(line), end))
            except (ValueError, KeyError, TypeError) as exc:
                self.spool._quarantine(self.spool.bad_path, line, f"unreadable spool line ({exc})")
                if not out:  # nothing good before it: skip it for good
                    self.ack(end)
        return out

    def ack(self, offset: int, count: int = 0) -> None:
        """Redis has every record up to ``offset``: a resumed replay starts after it."""
        if offset > self.offset:
            self.offset = offset
            self.sent += count
            self.spool._write_pos(offset)

    def dead(self, entry: SpoolEntry, reason: str) -> None:
        """Put aside a record Redis refuses for good (the caller then acknowledges past it)."""
        self.spool._quarantine(self.spool.dead_path, entry.to_line(), reason)

    def finish(self) -> None:
        """Every record is in Redis: drop the claimed file."""
        self._file.close()
        for path in (self.path, self.spool.pos_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        _fsync_dir(self.path.parent)
        self.release()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1
        self.spool._replaying.release()


class Spool:
    """A spool file at ``path`` (its directory is created). ``fsync=False`` is for benchmarks only."""

    durable = True

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        make_private_dirs(self.path.parent)
        check_spool_directory(self.path.parent)
        self.replaying_path = self.path.with_name(self.path.name + ".replaying")
        self.pos_path = self.path.with_name(self.path.name + ".replaying.pos")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.bad_path = self.path.with_name(self.path.name + ".bad")
        self.dead_path = self.path.with_name(self.path.name + ".dead")
        self.fsync = fsync
        self._append_lock = threading.Lock()
        self._replaying = threading.Lock()

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r})"

    # --- writing ---------------------------------------------------------------------------------

    def append(self, entry: SpoolEntry) -> None:
        """Write one record and fsync it before returning. Raises OSError if the disk refuses."""
        line = entry.to_line()
        with self._append_lock, _flocked(self.lock_path):
            fd = _open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn line from a crash
                    line = b"\n" + line
                os.write(fd, line)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if size == 0 and self.fsync:
                _fsync_dir(self.path.parent)  # make the new file's name durable too

    # --- replaying -------------------------------------------------------------------------------

    def has_pending(self) -> bool:
        """Anything to replay? Two stats, cheap enough to ask at the end of every turn."""
        return _size(self.replaying_path) > 0 or _size(self.path) > 0

    def pending_count(self) -> int:
        """Records waiting (good lines not yet acknowledged). Reads the files: for tests and ops."""
        total = 0
        pos = self._read_pos()
        for path, start in ((self.replaying_path, pos), (self.path, 0)):
            try:
                with os.fdopen(_open(path, os.O_RDONLY), "rb") as f:
                    f.seek(start)
                    for line in f:
                        try:
                            SpoolEntry.from_line(line)
                        except (ValueError, KeyError, TypeError):
                            continue
                        total += 1
            except FileNotFoundError:
                pass
        return total

    def claim(self) -> Claim | None:
        """Claim the oldest records for replay, or None when there is nothing (or someone else is
        replaying). A claimed file left by a crashed replay is resumed first, before newer records."""
        if not self._replaying.acquire(blocking=False):
            return None
        claim_fd = _open(self.path.with_name(self.path.name + ".claim"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(claim_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # one replayer across processes
        except BlockingIOError:
            os.close(claim_fd)
            self._replaying.release()
            return None
        try:
            with _flocked(self.lock_path):  # no append may be half-way through the rename
                if _size(self.replaying_path) == 0:
                    if _size(self.path) == 0:
                        raise _Nothing
                    os.replace(self.path, self.replaying_path)
                    self._write_pos(0)
                    _fsync_dir(self.path.parent)
            return Claim(self, claim_fd)
        except BaseException as exc:
            fcntl.flock(claim_fd, fcntl.LOCK_UN)
            os.close(claim_fd)
            self._replaying.release()
            if isinstance(exc, _Nothing):
                return None
            raise

    # --- helpers ---------------------------------------------------------------------------------

    def _read_pos(self) -> int:
        try:
            with os.fdopen(_open(self.pos_path, os.O_RDONLY), "rb") as f:
                return int(f.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _write_pos(self, offset: int) -> None:
        tmp = self.pos_path.with_name(self.pos_path.name + ".tmp")
        try:  # a stale one (or anything planted there): only the one replayer writes it
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        with os.fdopen(_open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w") as f:
            f.write(str(offset))
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self.pos_path)

    def _quarantine(self, path: Path, line: bytes, reason: str) -> None:
        """Keep ``line`` in ``path`` for a human. If that file cannot be written (a symbolic link
        planted there, a full disk), the line goes to the log instead: the replay goes on."""
        try:
            with os.fdopen(_open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as f:
                f.write(line if line.endswith(b"\n") else line + b"\n")
                f.flush()
                if self.fsync:
                    os.fsync(f.fileno())
        except OSError as exc:
            log.error(
                "spool %s: %s; cannot keep it in %s (%s), the line was: %r", self.path, reason, path, exc.strerror, line
            )
            return
        log.error("spool %s: %s; kept in %s", self.path, reason, path)


class MemorySpool:
    """The fallback when no spool file is configured: keeps records in this process only.

    Nothing is lost while the process lives; a crash or restart loses what it holds. Use
    :class:`Spool` in production (``Meter(..., spool="/var/lib/worker/quota.spool")``).
    """

    durable = False

    def __init__(self) -> None:
        self._entries: list[SpoolEntry] = []
        self._lock = threading.Lock()
        self._replaying = threading.Lock()

    def __repr__(self) -> str:
        return "MemorySpool()"

    def append(self, entry: SpoolEntry) -> None:
        with self._lock:
            self._entries.append(entry)

    def has_pending(self) -> bool:
        return bool(self._entries)

    def pending_count(self) -> int:
        return len(self._entries)

    def claim(self) -> _MemoryClaim | None:
        if not self._entries or not self._replaying.acquire(blocking=False):
            return None
        return _MemoryClaim(self)


class _MemoryClaim:
    def __init__(self, spool: MemorySpool) -> None:
        self.spool = spool
        self.offset = 0
        self.sent = 0
        self.dead_entries: list[tuple[SpoolEntry, str]] = []

    def batch(self, size: int) -> list[tuple[SpoolEntry, int]]:
        with self.spool._lock:
            return [
                (e, self.offset + i + 1) for i, e in enumerate(self.spool._entries[self.offset : self.offset + size])
            ]

    def ack(self, offset: int, count: int = 0) -> None:
        self.offset = max(self.offset, offset)
        self.sent += count

    def dead(self, entry: SpoolEntry, reason: str) -> None:
        log.error("memory spool: %s; dropping %s", reason, entry)
        self.dead_entries.append((entry, reason))

    def finish(self) -> None:
        self.release()

    def release(self) -> None:
        with self.spool._lock:
            del self.spool._entries[: self.offset]
            self.offset = 0
        if self.spool._replaying.locked():
            self.spool._replaying.release()


SpoolClaim = Claim | _MemoryClaim  # what a spool's ``claim()`` hands the replay (quota._replay)


def open_spool(spool: Any) -> Spool | MemorySpool:
    """A spool from what a caller passed: a Spool, a path, or None (memory only)."""
    if spool is None:
        return MemorySpool()
    if isinstance(spool, (Spool, MemorySpool)):
        return spool
    if isinstance(spool, (str, os.PathLike)):
        return Spool(spool)
    raise TypeError(f"spool must be a path, a quota._spool.Spool or None, got {type(spool).__name__}")


class _Nothing(Exception):
    pass


class _flocked:  # noqa: N801 - used like a function: ``with _flocked(path):``
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = _open(self.path, os.O_RDWR | os.O_CREAT)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _size(path: Path) -> int:
    """The size of a regular file at ``path``; 0 when there is none (or only a symbolic link)."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def _open(path: Path, flags: int) -> int:
    """``os.open`` as every spool file is opened: never through a symbolic link (ELOOP), never
    inherited by a child process, and created 0600 (less the umask)."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parent, each 0700 (``Path.mkdir(parents=True)`` gives
    the parents the default 0755). Directories that exist are left as they are."""
    missing = []
    for d in (directory, *directory.parents):
        if d.exists():
            break
        missing.append(d)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:  # made by another process meanwhile: checked below like any other
            pass


def check_spool_directory(directory: Path) -> None:
    """``ConfigError`` unless no other user can add, replace or link files in ``directory``.

    Refused: a directory owned by another user (root aside); one every user may write (``/tmp``);
    one inside a directory every user may write unless it is private (ours, not group- or
    world-writable: anyone could have made ``/tmp/quota`` first); one with an ancestor every
    user may write without the sticky bit (they could rename it away). Symbolic links in the
    path are followed: what is checked is where the files really go.
    """
    real = Path(os.path.realpath(directory))
    me = os.geteuid()
    info = os.stat(real)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"the spool directory {real} is not a directory")
    fix = f"put the spool in a private directory, e.g. {real / 'quota-spool'}/ (quota creates it 0700)"
    if info.st_uid not in (me, 0):
        raise ConfigError(f"the spool directory {real} belongs to another user (uid {info.st_uid}): {fix}")
    if info.st_mode & stat.S_IWOTH:
        raise ConfigError(f"the spool directory {real} is writable by every user: {fix}")
    for i, ancestor in enumerate(real.parents):
        mode = os.stat(ancestor).st_mode
        if not mode & stat.S_IWOTH:
            continue
        if not mode & stat.S_ISVTX:
            raise ConfigError(
                f"{ancestor}, above the spool directory {real}, is writable by every user "
                "without the sticky bit: anyone could rename the spool away"
            )
        if i == 0 and (info.st_uid != me or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
            raise ConfigError(
                f"the spool directory {real} is inside {ancestor}, which every user may write, "
                "and is not private: it must be ours and not group- or world-writable "
                f"(chmod 700 {real}), or {fix}"
            )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
