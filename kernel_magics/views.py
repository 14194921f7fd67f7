"""How a core result reaches a notebook view without the core importing a front end.

Front ends register their views of core types with IPython's display formatter (``%load_ext
kernel_magics`` does it for ``TrainResult`` and ``RegisterResult``). A result's ``_repr_html_``
asks for that view here, so callers who ask the object itself get the same rendering, and a core
without a front end loaded simply has none.
"""

from __future__ import annotations

from typing import Any


def front_end_view(obj: object, mime: str = "text/html") -> Any:
    """What the front end registered with the running IPython for ``obj``'s type and ``mime``,
    or None (no IPython, or no front end loaded)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    shell = get_ipython()
    if shell is None:
        return None
    try:
        printer = shell.display_formatter.formatters[mime].lookup(obj)
    except KeyError:
        return None
    return printer(obj)
