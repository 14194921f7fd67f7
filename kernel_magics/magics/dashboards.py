"""``%monitor``: the inference process live in the notebook (``widgets.monitor``), or one
snapshot of it where widgets do not render (papermill, nbconvert, a terminal).

Parses the line and hands over to the widget or to ``display/dashboards.py``; nothing heavy is
imported until the magic runs. Settings are the ``KernelMagics`` ones (``%config KernelMagics.*``).
"""

from __future__ import annotations

import argparse

from IPython.core.error import UsageError
from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from kernel_magics import api, display
from kernel_magics.argtypes import number
from kernel_magics.magics._args import FeatureMagics, View, front_end, word
from kernel_magics.widgets.front_end import widgets_render

_INTERVAL = number(float, 0.2)
_MINUTES = number(float, 0, inclusive=False)

VIEWS: list[View] = []  # %monitor displays; it returns nothing to render


@magics_class
class DashboardMagics(FeatureMagics):
    @line_magic
    @magic_arguments()
    @argument(
        "name", nargs="?", type=word, metavar="NAME", help="one deployed model (default: all)"
    )
    @argument("--interval", type=_INTERVAL, default=1.0, help="seconds between polls (≥ 0.2)")
    @argument("--minutes", type=_MINUTES, default=60.0, help="stop polling after this long")
    @argument("--stop", action="store_true", help="stop every running monitor of this kernel")
    @front_end
    def monitor(self, args: argparse.Namespace) -> None:
        """The inference process, live: per deployed model its live version, requests/s, p50
        and p99 latency, error rate, mean batch size, rows/s and queue; per language model
        tokens/s, time to first token p50/p99, inter-token latency p99, running and queued
        sequences and KV-cache use; usage per token, recent errors, the log's last lines and
        plots of the last minutes.

        One status snapshot (GET /v1/status) per --interval, on a background thread: the
        kernel keeps running cells. The Stop button, --stop, re-running the cell or --minutes
        stop it; the output then keeps a static copy. Where widgets do not render (papermill,
        nbconvert, a terminal) it shows one snapshot.

        Examples::

            %monitor
            %monitor digits --interval 2
            %monitor --stop
        """
        from kernel_magics.display import dashboards as views
        from kernel_magics.widgets.monitor import ServiceMonitor, snapshot_views

        if args.stop:
            if args.name:
                raise UsageError("--stop stops every monitor: give no NAME")
            stopped = ServiceMonitor.stop_all()
            display.show(views.monitors_stopped_line(stopped))
            return
        name = api.validate_name(args.name) if args.name else None
        settings = self.kernel_magics.settings()
        if widgets_render():
            ServiceMonitor(settings, name, interval_s=args.interval, minutes=args.minutes).show()
        else:
            display.show(*snapshot_views(settings, name))


MAGICS = DashboardMagics
