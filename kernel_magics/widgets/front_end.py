"""Where a dashboard can be a live widget, and how it stays readable where it cannot.

``widgets_render()`` decides between the widget and the static view. A widget needs a front
end that renders it (JupyterLab, Notebook, VS Code) *now*; papermill, ``nbconvert --execute``
and a terminal have none, and a widget there would save "model not found" into the notebook.
The kernel cannot ask the front end, so it reads what the front end left behind: the
``JPY_SESSION_NAME`` a Jupyter server gives the kernels of its notebooks, VS Code's
environment, or ipywidgets' control comm, which widget front ends open when they connect.
``KERNEL_MAGICS_WIDGETS=1|0`` overrides the guess.

``show_with_snapshot`` then displays the widget followed by a static HTML snapshot of the same
content, hidden by a style rule that only the rendered widget carries: live, the widget shows
alone; once the kernel is gone (a saved notebook reopened, nbconvert without widget state) the
widget cannot render, so neither does its style, and the snapshot shows.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from kernel_magics.display import in_notebook

ENV_VAR = "KERNEL_MAGICS_WIDGETS"
_FRONT_END_ENV = ("JPY_SESSION_NAME", "VSCODE_PID", "VSCODE_CWD")


def widgets_render() -> bool:
    """True where a dashboard should be a live widget (see the module)."""
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced in ("0", "1", "true", "false"):
        return forced in ("1", "true")
    if not in_notebook():
        return False
    if any(os.environ.get(name) for name in _FRONT_END_ENV):
        return True
    widget_class = _loaded_widget_class()
    return widget_class is not None and getattr(widget_class, "_control_comm", None) is not None


def _loaded_widget_class() -> Any:
    import sys

    module = sys.modules.get("ipywidgets")  # not imported: no front end has asked for widgets
    return getattr(module, "Widget", None)


class Snapshot:
    """The static companion of a displayed widget box (see ``show_with_snapshot``)."""

    def __init__(self, key: str, handle: Any, box_handle: Any) -> None:
        self.key = key
        self._handle = handle
        self._box_handle = box_handle

    def update(self, html_text: str, text: str) -> None:
        if self._handle is not None:
            self._handle.update(_bundle(self.key, html_text, text), raw=True)

    def replace_widget(self, html_text: str, text: str) -> None:
        """The dashboard is over: its output becomes the static view for good."""
        if self._box_handle is not None:
            self._box_handle.update({"text/plain": text, "text/html": html_text}, raw=True)
        if self._handle is not None:
            self._handle.update({"text/plain": ""}, raw=True)


def _bundle(key: str, html_text: str, text: str) -> dict[str, str]:
    return {"text/plain": text, "text/html": f'<div class="km-static-{key}">{html_text}</div>'}


def show_with_snapshot(box: Any, html_text: str, text: str) -> Snapshot:
    """Display ``box`` (a widget container) and its static snapshot below it."""
    import ipywidgets as widgets
    from IPython.display import display

    key = uuid.uuid4().hex[:12]
    hide = widgets.HTML(f"<style>.km-static-{key}{{display:none}}</style>")
    hide.layout.display = "none"  # no box of its own; the rule applies page-wide
    box.children = (*box.children, hide)
    box_handle = display(box, display_id=True)
    handle = display(_bundle(key, html_text, text), raw=True, display_id=True)
    return Snapshot(key, handle, box_handle)
