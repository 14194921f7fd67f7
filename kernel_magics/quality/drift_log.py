"""Current rows for drift from the inference log (``log_store``): the inputs and predictions of
one version, over a window of time or the newest N rows.

``log_reader.read_log`` builds a DataFrame with timestamps and one JSON parse per cell (1.5 s
for 100,000 rows); drift needs only the inputs and the predicted labels or values, so this reads
those two columns and parses each as one JSON array (≈ 0.3 s for 100,000 rows), which keeps
``%drift`` over 100,000 logged rows within a second. Standard library, orjson and numpy: the
inference process imports it.
"""

from __future__ import annotations

import re
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
    query = f"SELECT input, output, predicted FROM log WHERE {where} ORDER BY id DESC"
    if limit is not None:
        query += " LIMIT ?"
        args.append(limit)
    con = connect(home, create=False)
    if con is None:
        return [], []
    try:
        rows = con.execute(query, args).fetchall()
    except Exception as err:  # no table yet: nothing was logged
        if "no such table" in str(err):
            return [], []
        raise
    finally:
        con.close()
    inputs = _array(row[0] for row in rows)
    predicted = [row[2] for row in rows]
    if all(p is not None and p != "null" for p in predicted):
        return inputs, _array(predicted)
    return inputs, _array(row[1] for row in rows)


def _array(texts: Any) -> list[Any]:
    """Many JSON values parsed as one array: one call instead of one per row."""
    return orjson.loads("[" + ",".join(texts) + "]")
