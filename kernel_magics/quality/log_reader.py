"""Reading the inference log back: the rows of one model as a DataFrame, oldest first. Used by
``api.inference_log`` in the kernel and usable inside the inference process (pandas and the
standard library only); it reads the file directly, so it works whether or not the process runs.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson

from kernel_magics.errors import InvalidInput, clip
from kernel_magics.quality.log_store import connect

if TYPE_CHECKING:
    import pandas as pd

# what read_log returns, in order (the log's schema is log_store's)
COLUMNS = ("time", "version", "request_id", "row", "input", "output", "latency_ms")
JSON_COLUMNS = ("input", "output", "predicted")  # logged as JSON text
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
Since: TypeAlias = str | float | int | _dt.datetime | None  # a pandas Timestamp is a datetime


def since_epoch(since: Since, now: float | None = None) -> float | None:
    """``since`` as seconds since the epoch: None (everything), a duration back from now
    ("90s", "30m", "1h", "2d"), seconds back from now as a number, or a point in time (a naive
    one is UTC)."""
    if since is None:
        return None
    now = time.time() if now is None else now
    if isinstance(since, bool):
        raise InvalidInput("since must be a duration like '1h', seconds, or a time")
    if isinstance(since, int | float):
        if since < 0:
            raise InvalidInput("since must be a duration of 0 seconds or more")
        return now - float(since)
    if isinstance(since, str):
        match = _DURATION.fullmatch(since)
        if match is None:
            raise InvalidInput(
                f"since {clip(since)!r} is not a duration: use e.g. 90s, 30m, 1h or 2d"
            )
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if isinstance(since, _dt.datetime):  # pandas.Timestamp is one too
        import pandas as pd  # only for a time given as text; the kernel's commands stay light

        stamp = pd.Timestamp(since)
        if stamp.tzinfo is None:
            stamp = stamp.tz_localize("UTC")
        return float(stamp.timestamp())
    raise InvalidInput("since must be a duration like '1h', seconds, or a time")


def read_log(
    home: Path | str,
    name: str,
    *,
    since: Since = None,
    version: int | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """The logged rows of model ``name`` (the newest ``limit`` when given), oldest first, with
    the columns of ``COLUMNS``."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidInput("limit must be a whole number of rows, 1 or more")
    selection, args = _selection(name, since, version, limit)
    rows = _fetch(home, f"SELECT {', '.join(COLUMNS)}{selection}", args)
    rows.reverse()
    return _frame(rows)


def read_json_columns(
    home: Path | str,
    name: str,
    columns: Sequence[str],
    *,
    since: Since = None,
    version: int | None = None,
    limit: int | None = None,
) -> dict[str, list[Any]]:
    """Each of ``columns`` (JSON ones: ``JSON_COLUMNS``) over the logged rows of ``name`` that
    ``read_log`` would return, newest first, as one parsed list per column, the lists aligned
    (a NULL is None).

    For readers that need only values, fast (drift over 100,000 rows within a second): no
    pandas, no timestamps and no Python object per row before orjson parses; SQLite joins each
    column into one JSON array, parsed once. ``read_log`` parses each cell on its own."""
    unknown = [c for c in columns if c not in JSON_COLUMNS]
    if unknown or not columns:
        raise ValueError(f"columns must be some of {', '.join(JSON_COLUMNS)}, got {columns!r}")
    selection, args = _selection(name, since, version, limit)
    arrays = ", ".join(
        f"'[' || coalesce(group_concat(coalesce({c}, 'null'), ','), '') || ']'" for c in columns
    )
    rows = _fetch(home, f"SELECT {arrays} FROM (SELECT {', '.join(columns)}{selection})", args)
    if not rows:
        return {c: [] for c in columns}
    return {c: orjson.loads(text) for c, text in zip(columns, rows[0], strict=True)}


def _selection(
    name: str, since: Since, version: int | None, limit: int | None
) -> tuple[str, list[Any]]:
    """`` FROM log WHERE … ORDER BY id DESC [LIMIT ?]`` and its arguments: the rows of every
    reader, newest first."""
    where: list[str] = ["model = ?"]
    args: list[Any] = [name]
    start = since_epoch(since)
    if start is not None:
        where.append("time >= ?")
        args.append(start)
    if version is not None:
        where.append("version = ?")
        args.append(int(version))
    selection = f" FROM log WHERE {' AND '.join(where)} ORDER BY id DESC"
    if limit is not None:
        selection += " LIMIT ?"
        args.append(limit)
    return selection, args


def _fetch(home: Path | str, query: str, args: list[Any]) -> list[tuple]:
    """``query``'s rows; none where nothing was logged yet (no file, or no table in it)."""
    con = connect(home, create=False)
    if con is None:
        return []
    try:
        return con.execute(query, args).fetchall()
    except Exception as err:  # a log written by a newer schema, or not a database
        if "no such table" in str(err):
            return []
        raise
    finally:
        con.close()


def _frame(rows: list[tuple]) -> pd.DataFrame:
    import pandas as pd  # lazily: `kernel-magics predict` and the workers import this module

    loads = orjson.loads
    frame = pd.DataFrame(
        {
            "time": pd.to_datetime([r[0] for r in rows], unit="s", utc=True),
            "version": pd.Series([r[1] for r in rows], dtype="int64"),
            "request_id": pd.Series([r[2] for r in rows], dtype=object),
            "row": pd.Series([r[3] for r in rows], dtype="int64"),
            "input": pd.Series([loads(r[4]) for r in rows], dtype=object),
            "output": pd.Series([loads(r[5]) for r in rows], dtype=object),
            "latency_ms": pd.Series([r[6] for r in rows], dtype="float64"),
        }
    )
    return frame[list(COLUMNS)]
