"""The daemon's SQLite databases (records, indexes, memos under ``--root``), all opened one way."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_db(path: Path, schema: str, *, durable: bool = True) -> sqlite3.Connection:
    """``path`` (its directory made if missing) opened for use from any thread, each caller
    serialising its statements with a lock of its own; in autocommit mode (a transaction is an
    explicit ``BEGIN``) with a WAL journal; ``schema`` (``CREATE … IF NOT EXISTS``) run as a script.

    ``durable=False`` for what only speeds things up or explains them: no fsync per commit
    (``synchronous=NORMAL``: WAL keeps every commit across a daemon crash; a power loss may drop
    the newest ones).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    if not durable:
        db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(schema)
    return db
