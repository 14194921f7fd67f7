"""Reading the inference log back: the rows of one model as a DataFrame, oldest first. Used by
``api.inference_log`` in the kernel and usable inside the inference process (pandas and the
standard library only); it reads the file directly, so it works whether or not the process runs.
"""

from __future__ import annotations

import datetime as _dt
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson

from kernel_magics.errors import InvalidInput, clip
from kernel_magics.quality.log_store import connect

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ("time", "version", "request_id", "row", "input", "output", "latency_ms")
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
    where, args = _filter(name, since, version)
    query = (
        "SELECT time, version, request_id, row, input, output, latency_ms FROM log"
        f" WHERE {where} ORDER BY id DESC" + (" LIMIT ?" if limit is not None else "")
    )
    if limit is not None:
        args.append(limit)
    con = connect(home, create=False)
    if con is None:
        return _frame([])
    try:
        rows = con.execute(query, args).fetchall()
    except Exception as err:  # a log written by a newer schema, or not a database
        if "no such table" in str(err):
            return _frame([])
        raise
    finally:
        con.close()
    rows.reverse()
    return _frame(rows)


def _filter(name: str, since: Since, version: int | None) -> tuple[str, list[Any]]:
    where: list[str] = ["model = ?"]
    args: list[Any] = [name]
    start = since_epoch(since)
    if start is not None:
        where.append("time >= ?")
        args.append(start)
    if version is not None:
        where.append("version = ?")
        args.append(int(version))
    return " AND ".join(where), args


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
