"""The persistent cache: an SQLite index over content files, safe across processes.

Entries are bytes (object code, PTX) or JSON (tuning records); nothing is unpickled or
executed from the cache. Each content file is written atomically and its sha256 kept in the
index, so a truncated or corrupt file is detected on read, discarded with a warning and
rebuilt by `get_or_build`. Over `max_bytes`, the least recently used entries are evicted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lowbitc.cache.fsutil import atomic_write, default_cache_dir, ensure_private_dir, file_lock
from lowbitc.cache.key import CacheKey, canonical_json, codegen_hash
from lowbitc.errors import CacheError, UserArgumentError

DEFAULT_MAX_BYTES = 2 * 1024**3
INDEX_NAME = "index.sqlite"
SCHEMA_VERSION = 1
_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,31}")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    digest   TEXT PRIMARY KEY,
    kind     TEXT NOT NULL,
    file     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    sha256   TEXT NOT NULL,
    created  INTEGER NOT NULL,
    accessed INTEGER NOT NULL,
    meta     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_by_access ON entries(accessed);
"""


class CacheWarning(UserWarning):
    """A cache entry was unreadable (truncated, corrupt or missing) and has been discarded."""


def _max_bytes_from_env() -> int:
    text = os.environ.get("LOWBITC_CACHE_MAX_BYTES")
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        return int(text)
    except ValueError as e:
        raise UserArgumentError(
            f"LOWBITC_CACHE_MAX_BYTES: expected a number of bytes, got {text!r}"
        ) from e


class Cache:
    """A directory of cached artifacts (default `~/.cache/lowbitc` or `$LOWBITC_CACHE_DIR`)."""

    def __init__(self, path: str | os.PathLike | None = None, max_bytes: int | None = None):
        self.path = ensure_private_dir(Path(path) if path is not None else default_cache_dir())
        self.max_bytes = _max_bytes_from_env() if max_bytes is None else int(max_bytes)
        if self.max_bytes <= 0:
            raise UserArgumentError(f"max_bytes: expected a positive size, got {max_bytes!r}")
        self.stats = {"hits": 0, "misses": 0, "builds": 0, "discarded": 0}
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r}, max_bytes={self.max_bytes})"

    # -- connections ----------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        """This thread's connection (a fresh one after fork)."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            try:
                conn = self._open()
            except sqlite3.OperationalError as e:  # locked for too long, read-only, disk full
                raise CacheError(f"cache index {self.path / INDEX_NAME}: {e}") from e
            except sqlite3.DatabaseError as e:  # not a database any more: start a fresh one
                self._set_aside_index(str(e))
                conn = self._open()
            local.conn, local.pid = conn, os.getpid()
        return local.conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path / INDEX_NAME, timeout=60, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout = 60000")
            _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            conn.execute("PRAGMA synchronous = NORMAL")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version != SCHEMA_VERSION:
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _set_aside_index(self, reason: str) -> None:
        """Move a corrupt index out of the way; its content files go with it."""
        index = self.path / INDEX_NAME
        with contextlib.suppress(OSError):
            os.replace(index, index.with_name(f"{INDEX_NAME}.corrupt"))
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                index.with_name(INDEX_NAME + suffix).unlink()
        shutil.rmtree(self.path / "objects", ignore_errors=True)
        warnings.warn(
            f"lowbitc cache {self.path}: the index was unreadable ({reason}); "
            f"moved it to {INDEX_NAME}.corrupt and started an empty cache",
            CacheWarning,
            stacklevel=4,
        )

    @contextlib.contextmanager
    def _write(self):
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _unlink(self, files: list[str]) -> None:
        for rel in files:
            with contextlib.suppress(OSError):
                (self.path / rel).unlink()

    # -- reading --------------------------------------------------------------------------
    def _read_checked(self, digest: str) -> tuple[bytes | None, str | None, str | None]:
        """(data, None, file) for a good entry, (None, None, None) for none, and
        (None, reason, file) for a bad one."""
        conn = self._db()
        row = conn.execute(
            "SELECT file, size, sha256 FROM entries WHERE digest = ?", (digest,)
        ).fetchone()
        if row is None:
            return None, None, None
        rel, size, sha = row
        try:
            data = (self.path / rel).read_bytes()
        except FileNotFoundError:
            return None, f"content file {rel} is missing", rel
        if len(data) != size:
            return None, f"content file {rel} has {len(data)} bytes, not {size} (truncated)", rel
        if hashlib.sha256(data).hexdigest() != sha:
            return None, f"content file {rel} fails its sha256 check (corrupt)", rel
        with contextlib.suppress(sqlite3.OperationalError):  # a read-only cache still serves
            # an access time only orders eviction: not worth the WAL sync (3-13 ms here) that
            # the first write of a process would pay; losing one to a power cut is harmless
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute(
                "UPDATE entries SET accessed = ? WHERE digest = ?", (time.time_ns(), digest)
            )
        conn.execute("PRAGMA synchronous = NORMAL")
        return data, None, rel

    def _discard(self, digest: str, rel: str, reason: str) -> None:
        """Drop the entry if it still points at the bad file `rel`, and warn."""
        with self._write() as conn:
            conn.execute("DELETE FROM entries WHERE digest = ? AND file = ?", (digest, rel))
        self._unlink([rel])
        self.stats["discarded"] += 1
        warnings.warn(
            f"lowbitc cache {self.path}: discarded entry {digest[:16]}: {reason}; "
            "it will be rebuilt",
            CacheWarning,
            stacklevel=3,
        )

    def get(self, key: CacheKey) -> bytes | None:
        """The bytes stored under `key`, or None (a bad entry is discarded with a warning)."""
        digest = _digest(key)
        data, reason, rel = self._read_checked(digest)
        if reason is not None:
            # a concurrent put may have replaced the file between our two reads: look once more
            data, reason, rel = self._read_checked(digest)
            if reason is not None:
                self._discard(digest, rel, reason)
        self.stats["hits" if data is not None else "misses"] += 1
        return data

    def get_json(self, key: CacheKey) -> Any | None:
        """The JSON value stored under `key`, or None."""
        data = self.get(key)
        if data is None:
            return None
        try:
            return json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            rel = (
                self._db()
                .execute("SELECT file FROM entries WHERE digest = ?", (_digest(key),))
                .fetchone()
            )
            if rel is not None:
                self._discard(_digest(key), rel[0], f"stored JSON does not parse ({e})")
            return None

    # -- writing --------------------------------------------------------------------------
    def put(self, key: CacheKey, data: bytes, kind: str = "object") -> None:
        """Store `data` under `key`, then evict least recently used entries over the cap."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise UserArgumentError(f"data: expected bytes, got {type(data).__name__}")
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise UserArgumentError(f"kind: expected a short lower-case word, got {kind!r}")
        data = bytes(data)
        digest = _digest(key)
        sha = hashlib.sha256(data).hexdigest()
        rel = f"objects/{digest[:2]}/{digest}-{sha[:16]}.bin"
        atomic_write(self.path / rel, data)
        now = time.time_ns()
        meta = json.dumps(key.describe())
        with self._write() as conn:
            old = conn.execute("SELECT file FROM entries WHERE digest = ?", (digest,)).fetchone()
            conn.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (digest, kind, rel, len(data), sha, now, now, meta),
            )
            victims = self._evict(conn, keep=digest)
        self._unlink(victims + ([old[0]] if old and old[0] != rel else []))

    def put_json(self, key: CacheKey, value: Any, kind: str = "tuning") -> None:
        """Store a JSON value (canonical text) under `key`."""
        self.put(key, canonical_json(value, "value").encode("utf-8"), kind)

    def _evict(self, conn: sqlite3.Connection, keep: str) -> list[str]:
        (total,) = conn.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()
        victims: list[str] = []
        if total <= self.max_bytes:
            return victims
        rows = conn.execute(
            "SELECT digest, file, size FROM entries WHERE digest != ? ORDER BY accessed, digest",
            (keep,),
        ).fetchall()
        for digest, rel, size in rows:
            if total <= self.max_bytes:
                break
            conn.execute("DELETE FROM entries WHERE digest = ?", (digest,))
            victims.append(rel)
            total -= size
        return victims

    def get_or_build(
        self, key: CacheKey, build: Callable[[], bytes], kind: str = "object"
    ) -> bytes:
        """The cached bytes for `key`, building and storing them on a miss.

        Processes that miss the same key at once take turns on a per-key lock file, so the
        kernel is built once and the others read the stored result.
        """
        data = self.get(key)
        if data is not None:
            return data
        digest = _digest(key)
        with file_lock(self.path / "locks" / f"{digest[:2]}" / f"{digest}.lock"):
            data = self.get(key)
            if data is not None:
                return data
            data = build()
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise UserArgumentError(
                    f"build: expected the builder to return bytes, got {type(data).__name__}"
                )
            self.stats["builds"] += 1
            self.put(key, data, kind)
        return bytes(data)

    # -- maintenance ----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Location, entry count, total size, size cap and per-kind counts."""
        rows = (
            self._db()
            .execute("SELECT kind, COUNT(*), COALESCE(SUM(size), 0) FROM entries GROUP BY kind")
            .fetchall()
        )
        by_kind = {kind: {"entries": n, "bytes": size} for kind, n, size in sorted(rows)}
        return {
            "path": str(self.path),
            "entries": sum(v["entries"] for v in by_kind.values()),
            "bytes": sum(v["bytes"] for v in by_kind.values()),
            "max_bytes": self.max_bytes,
            "by_kind": by_kind,
            "codegen_hash": codegen_hash(),
        }

    def clear(self) -> int:
        """Remove every entry and leave the directory empty (index, objects, per-key locks,
        host records, the native loader's tmp/); returns how many entries there were. A
        process compiling at the same moment may have to rebuild what it was storing."""
        with self._write() as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM entries").fetchone()
            conn.execute("DELETE FROM entries")
            shutil.rmtree(self.path / "objects", ignore_errors=True)
        self.close()  # the next use opens a fresh index
        for child in self.path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    child.unlink()
        return count

    def close(self) -> None:
        """Close this thread's index connection (reopened on next use)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.pid = None


def _digest(key: CacheKey) -> str:
    if isinstance(key, CacheKey):
        return key.digest
    raise UserArgumentError(f"key: expected a CacheKey, got {type(key).__name__} {key!r}")


_default: dict[Path, Cache] = {}


def default_cache() -> Cache | None:
    """The process-wide cache at the default location, or None if `LOWBITC_NO_CACHE=1`."""
    if os.environ.get("LOWBITC_NO_CACHE", "") not in ("", "0"):
        return None
    path = default_cache_dir()
    if path not in _default:
        _default[path] = Cache(path)
    return _default[path]


def _retry_locked(run, seconds: float = 60.0):
    """`run()`, retried while SQLite says the database is locked: switching a new index to
    WAL takes an exclusive lock and reports SQLITE_BUSY at once, without the busy handler,
    when another process opens it at the same moment."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return run()
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
