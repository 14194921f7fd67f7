"""Leaving one of the project's own processes without the interpreter's slow teardown.

Once MLflow (with SQLAlchemy and its protobuf modules) or torch is imported, the collection of
cyclic garbage that the interpreter runs while it shuts down walks a heap of a few hundred
thousand objects: measured on a process that had only opened an MLflow store, 0.7 s of CPU,
2–4 s of wall time on a busy 2-core machine, where the inference process's clean stop then
outlasted its stopper's 5 s and ended with SIGTERM. Every CLI command paid it too. Our
processes leave nothing for that collection to do (the memory goes back to the system when
they exit), so it is skipped; the ``atexit`` handlers and module teardown still run.
"""

from __future__ import annotations

import gc


def skip_exit_collection() -> None:
    """Call as the process's ``main`` returns: the objects alive now are never collected again
    (``gc.freeze``), so the interpreter's shutdown does not walk them."""
    gc.freeze()
