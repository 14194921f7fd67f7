"""Feedback: the true labels (or values) of logged requests, sent back by a client
(``POST /v1/models/{name}/feedback``, ``api.feedback``) and stored beside the log, keyed by
(model, request id, row). A second label for the same row replaces the first.

The body is checked here once for the route and the API: ``parse_feedback`` raises
``InvalidInput`` (a 400) naming what is wrong; ids that are not in the log are reported back,
not refused (the row may have been sampled out, evicted, or not written yet).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from kernel_magics.errors import InvalidInput, clip
from kernel_magics.quality.log_store import MAX_REQUEST_ID, connect

MAX_FEEDBACK_ITEMS = 10_000  # labels per request: a body stays a bounded write
MAX_LABEL_CHARS = 1000

Feedback = tuple[str, int, Any]  # (request id, row, label)


def parse_feedback(doc: Any) -> list[Feedback]:
    """``{"feedback": [{"request_id": "...", "row": 0, "label": ...}, ...]}`` (``row``
    optional, 0) as (request id, row, label) triples."""
    if not isinstance(doc, dict) or set(doc) != {"feedback"}:
        raise InvalidInput('body must be a JSON object {"feedback": [{"request_id": ..., ...}]}')
    items = doc["feedback"]
    if not isinstance(items, list) or not items:
        raise InvalidInput('"feedback" must be a non-empty list of labelled request ids')
    if len(items) > MAX_FEEDBACK_ITEMS:
        raise InvalidInput(f'"feedback" holds at most {MAX_FEEDBACK_ITEMS:,} items per request')
    return [_item(item, index) for index, item in enumerate(items)]


def _item(item: Any, index: int) -> Feedback:
    where = f"feedback[{index}]"
    if not isinstance(item, dict):
        raise InvalidInput(f'{where} must be an object {{"request_id": ..., "label": ...}}')
    unknown = set(item) - {"request_id", "row", "label"}
    if unknown:
        raise InvalidInput(f"{where}: unknown key(s) {clip(', '.join(sorted(unknown)))}")
    rid = item.get("request_id")
    if not isinstance(rid, str) or not 0 < len(rid) <= MAX_REQUEST_ID:
        raise InvalidInput(f"{where}: request_id must be a string of 1-{MAX_REQUEST_ID} chars")
    row = item.get("row", 0)
    if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < 2**31:
        raise InvalidInput(f"{where}: row must be a whole number ≥ 0 (the row in its request)")
    if "label" not in item:
        raise InvalidInput(f"{where}: label is missing")
    label = item["label"]
    if label is None or isinstance(label, dict | list):
        raise InvalidInput(f"{where}: label must be a class label or a number")
    if isinstance(label, float) and label != label:  # NaN
        raise InvalidInput(f"{where}: label must be a class label or a number")
    if isinstance(label, str) and len(label) > MAX_LABEL_CHARS:
        raise InvalidInput(f"{where}: label is longer than {MAX_LABEL_CHARS} characters")
    return rid, row, label


def record_feedback(home: Path | str, name: str, items: list[Feedback]) -> dict[str, Any]:
    """Store the labels whose rows are in the log; ``{"accepted": N, "unknown": [ids]}``."""
    con = connect(home)
    assert con is not None
    unknown: dict[str, None] = {}
    now = time.time()
    try:
        with con:
            stored = []
            for rid, row, label in items:
                found = con.execute(
                    "SELECT 1 FROM log WHERE model = ? AND request_id = ? AND row = ? LIMIT 1",
                    (name, rid, row),
                ).fetchone()
                if found is None:
                    unknown[rid] = None
                else:
                    stored.append((name, rid, row, orjson.dumps(label).decode(), now))
            con.executemany(
                "INSERT OR REPLACE INTO feedback (model, request_id, row, label, time)"
                " VALUES (?, ?, ?, ?, ?)",
                stored,
            )
    finally:
        con.close()
    return {"accepted": len(stored), "unknown": list(unknown)}
