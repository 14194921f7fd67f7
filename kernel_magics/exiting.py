"""Leaving one of the project's own processes without the interpreter's slow teardown.

Once MLflow (with SQLAlchemy and its protobuf modules) or torch is imported, the collection of
cyclic garbage that the interpreter runs while it shuts down walks a heap of a few hundred
thousand objects: 2–4 s on a 2-core machine, measured on a process that had only opened an
MLflow store. The inference process's clean stop waited that long (its stopper gave up after
5 s and sent SIGTERM), and so did every CLI command. Our processes leave nothing for that
collection to do (the memory goes back to the system when they exit), so it is skipped; the
``atexit`` handlers and module teardown still run.
"""

from __future__ import annotations

import gc


def skip_exit_collection() -> None:
    """Call as the process's ``main`` returns: the objects alive now are never collected again
    (``gc.freeze``), so the interpreter's shutdown does not walk them."""
    gc.freeze()
