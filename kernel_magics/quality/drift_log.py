"""Current rows for drift from the inference log (``log_store``): the inputs and predictions of
one version, over a window of time or the newest N rows.

``log_reader.read_log`` builds a DataFrame with timestamps and one JSON parse per cell (1.5 s
for 100,000 rows); drift needs only the inputs and the predicted labels or values, so this reads
those two columns, joined by SQLite into one JSON array each and parsed once, which keeps
``%drift`` over 100,000 logged rows within a second. Standard library, orjson and numpy: the
inference process imports it.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import orjson

from kernel_magics.errors import InvalidInput, clip
from kernel_magics.quality.log_reader import Since, since_epoch
from kernel_magics.quality.log_store import connect

_ROWS = re.compile(r"\s*(\d+)\s*rows?\s*")
Window = str | int | None


def parse_window(window: Window) -> tuple[Since, int | None]:
    """``window`` as (since, limit): None (every logged row), a duration ("90s", "30m", "1h",
    "2d": rows logged since then), or a number of rows ("5000rows", or 5000: the newest N)."""
    if window is None:
        return None, None
    if isinstance(window, bool):
        raise InvalidInput("window must be a duration like '1h' or a row count like '5000rows'")
    if isinstance(window, int):
        rows = window
    else:
        match = _ROWS.fullmatch(str(window))
        if match is None:
            since_epoch(str(window))  # a bad duration: its one-line message
            return str(window), None
        rows = int(match.group(1))
    if rows < 1:
        raise InvalidInput(f"window {clip(window)!r} must be at least 1 row")
    return None, rows


def logged_rows(
    home: Path | str, name: str, version: int, window: Window = None
) -> tuple[list[Any], list[Any]]:
    """(inputs, predictions) of the rows version ``version`` of ``name`` answered in
    ``window``: inputs as clients sent them, predictions the label (classifiers) or value the
    answer stands for, or the answer itself where it stands for neither (several outputs)."""
    since, limit = parse_window(window)
    where, args = "model = ? AND version = ?", [name, int(version)]
    start = since_epoch(since)
    if start is not None:
        where += " AND time >= ?"
        args.append(start)
    order = " ORDER BY id DESC" + (" LIMIT ?" if limit is not None else "")
    if limit is not None:
        args.append(limit)
    con = connect(home, create=False)
    if con is None:
        return [], []
    try:
        inputs = _column(con, "input", where + order, args)
        if con.execute(  # a row answered with several outputs has no predicted label or value
            f"SELECT count(*) FROM (SELECT predicted FROM log WHERE {where}{order})"
            " WHERE predicted IS NULL OR predicted = 'null'",
            args,
        ).fetchone()[0]:
            return inputs, _column(con, "output", where + order, args)
        return inputs, _column(con, "predicted", where + order, args)
    except sqlite3.OperationalError as err:  # no table yet: nothing was logged
        if "no such table" in str(err):
            return [], []
        raise
    finally:
        con.close()


def _column(con: sqlite3.Connection, column: str, selection: str, args: list[Any]) -> list[Any]:
    """One column's JSON values as a list: SQLite joins them into one JSON array (no Python
    object per row before orjson parses it once)."""
    text = con.execute(
        f"SELECT '[' || coalesce(group_concat({column}, ','), '') || ']' FROM "
        f"(SELECT {column} FROM log WHERE {selection})",
        args,
    ).fetchone()[0]
    return orjson.loads(text)
