"""Current rows for drift from the inference log (``log_store``): the inputs and predictions of
one version, over a window of time or the newest N rows.

``log_reader.read_log`` builds a DataFrame with timestamps and one JSON parse per cell (1.5 s
for 100,000 rows); drift needs only the inputs and the predicted labels or values, so this reads
those two columns with ``log_reader.read_json_columns`` (one JSON array each, parsed once), which
keeps ``%drift`` over 100,000 logged rows within a second. Standard library and orjson: the
inference process imports it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from kernel_magics.errors import InvalidInput, clip
from kernel_magics.quality.log_reader import Since, read_json_columns, since_epoch

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
    read = functools.partial(
        read_json_columns, home, name, since=since, version=int(version), limit=limit
    )
    logged = read(("input", "predicted"))
    # a row answered with several outputs has no predicted label or value: the answers then
    if any(value is None for value in logged["predicted"]):
        return logged["input"], read(("output",))["output"]
    return logged["input"], logged["predicted"]
