"""The inference log's file: one SQLite database in WAL mode in the home folder, holding the
sampled requests (``log``) and the true labels clients send back (``feedback``).

SQLite rather than Parquet, by measurement (docs/quality.md): appending batches of 64 rows,
SQLite in WAL mode wrote 182,000 rows/s against Parquet's 81,000 (a file per batch), and read
100,000 rows back into a DataFrame in 1.5 s against 3.5 s. SQLite also gives what Parquet would
need code for: oldest-first eviction is one ``DELETE``, the kernel reads while the inference
process writes (WAL readers never block the writer), and several workers append to one file.

Imports nothing beyond the standard library: the inference process and the kernel both open it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# The longest X-Request-ID the process echoes and logs (a client's longer one is replaced by a
# generated id; serving/request/protocol.py), and so the longest id feedback can name.
MAX_REQUEST_ID = 128
LOG_FOLDER = "quality"
LOG_FILE = "inference_log.db"
_BUSY_TIMEOUT_MS = 5000  # several workers append to one file: wait for the lock, briefly

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,          -- seconds since the epoch, UTC
    model TEXT NOT NULL,
    version INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    row INTEGER NOT NULL,        -- the position inside its request
    input TEXT NOT NULL,         -- JSON: the row as the client sent it
    output TEXT NOT NULL,        -- JSON: what was answered for the row
    predicted TEXT,              -- JSON: the label or value the output stands for (live metrics)
    classifier INTEGER NOT NULL, -- 1: predicted is a class label; 0: a value (a regressor)
    latency_ms REAL NOT NULL     -- of the whole request
);
CREATE INDEX IF NOT EXISTS log_model ON log (model, id);
CREATE INDEX IF NOT EXISTS log_request ON log (model, request_id, row);
CREATE TABLE IF NOT EXISTS feedback (
    model TEXT NOT NULL,
    request_id TEXT NOT NULL,
    row INTEGER NOT NULL,
    label TEXT NOT NULL,         -- JSON: the true label or value
    time REAL NOT NULL,
    PRIMARY KEY (model, request_id, row)
);
"""


def log_path(home: Path | str) -> Path:
    """Where the inference log of the home folder ``home`` lives."""
    return Path(home) / LOG_FOLDER / LOG_FILE


def connect(home: Path | str, *, create: bool = True) -> sqlite3.Connection | None:
    """A connection to the log (created with its tables when ``create``); None when there is
    no log yet and ``create`` is False."""
    path = log_path(home)
    if not create and not path.exists():
        return None
    if create:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    con = sqlite3.connect(str(path), timeout=_BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
    if create:
        con.executescript(_SCHEMA)
    return con
