"""Live metrics: the log joined with the feedback, per served version — accuracy and macro F1
for a classifier, MSE and MAE for a regressor — over the rows that have a label. numpy and the
standard library only, so the inference process can compute them too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson

from kernel_magics.quality.log_reader import Since, since_epoch
from kernel_magics.quality.log_store import connect


def live_metrics(
    home: Path | str, name: str, *, version: int | None = None, since: Since = None
) -> dict[int, dict[str, float]]:
    """Per version of ``name`` with labelled rows (requests answered since ``since``):
    ``{"labelled": N, "accuracy": …, "f1_macro": …}`` for a classifier, or
    ``{"labelled": N, "mse": …, "mae": …}`` for a regressor."""
    where: list[str] = ["f.model = ?"]
    args: list[Any] = [name]
    start = since_epoch(since)
    if start is not None:
        where.append("l.time >= ?")
        args.append(start)
    if version is not None:
        where.append("l.version = ?")
        args.append(int(version))
    con = connect(home, create=False)
    if con is None:
        return {}
    try:
        rows = con.execute(
            # feedback first (CROSS JOIN fixes the order): labels are few, the log is long,
            # and each label finds its row through the log_request index
            "SELECT l.version, l.classifier, l.predicted, f.label FROM feedback f CROSS JOIN log l"
            " ON l.model = f.model AND l.request_id = f.request_id AND l.row = f.row"
            f" WHERE {' AND '.join(where)} ORDER BY l.id",
            args,
        ).fetchall()
    except Exception as err:
        if "no such table" in str(err):
            return {}
        raise
    finally:
        con.close()
    grouped: dict[int, tuple[bool, list[Any], list[Any]]] = {}
    for ver, classifier, predicted, label in rows:
        entry = grouped.setdefault(int(ver), (bool(classifier), [], []))
        entry[1].append(orjson.loads(predicted) if predicted else None)
        entry[2].append(orjson.loads(label))
    return {ver: _figures(*grouped[ver]) for ver in sorted(grouped)}


def _figures(classifier: bool, predicted: list[Any], labels: list[Any]) -> dict[str, float]:
    if classifier:
        return {"labelled": len(labels), **classification(predicted, labels)}
    pairs = [(p, t) for p, t in zip(predicted, labels, strict=True) if _number(p) and _number(t)]
    if not pairs:
        return {"labelled": len(labels)}
    return {"labelled": len(labels), **regression([p for p, _ in pairs], [t for _, t in pairs])}


def classification(predicted: list[Any], labels: list[Any]) -> dict[str, float]:
    """Accuracy and macro F1 (the mean over every class seen in either list); labels compare
    as text, so a label sent as 2 matches a class answered as "2"."""
    pred = [str(p) for p in predicted]
    true = [str(t) for t in labels]
    hits = sum(p == t for p, t in zip(pred, true, strict=True))
    scores = []
    for cls in sorted(set(pred) | set(true)):
        tp = sum(p == cls and t == cls for p, t in zip(pred, true, strict=True))
        fp = sum(p == cls and t != cls for p, t in zip(pred, true, strict=True))
        fn = sum(p != cls and t == cls for p, t in zip(pred, true, strict=True))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return {"accuracy": hits / len(true), "f1_macro": float(np.mean(scores))}


def regression(predicted: list[float], labels: list[float]) -> dict[str, float]:
    error = np.asarray(predicted, dtype=float) - np.asarray(labels, dtype=float)
    return {"mse": float(np.mean(error**2)), "mae": float(np.mean(np.abs(error)))}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
