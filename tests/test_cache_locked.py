"""The cache index survives SQLite's immediate SQLITE_BUSY when processes open it at once."""

from __future__ import annotations

import sqlite3

import pytest

from lowbitc.cache import store


def test_locked_is_retried_and_other_errors_are_not():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "wal"

    assert store._retry_locked(flaky) == "wal" and len(calls) == 3

    def broken():
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError, match="disk"):
        store._retry_locked(broken)

    def always_locked():
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        store._retry_locked(always_locked, seconds=0.05)


def test_switching_a_new_index_to_wal_is_retried(tmp_path, monkeypatch):
    real = sqlite3.connect
    failures = []

    class Conn:
        def __init__(self, conn):
            self.conn = conn

        def execute(self, sql, *args):
            if "journal_mode" in sql and not failures:
                failures.append(sql)
                raise sqlite3.OperationalError("database is locked")
            return self.conn.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.conn, name)

    monkeypatch.setattr(store.sqlite3, "connect", lambda *a, **k: Conn(real(*a, **k)))
    cache = store.Cache(tmp_path / "c")
    assert cache._db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert failures
