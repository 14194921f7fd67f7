"""``%log``: the inference log of a model in a short table (``api.inference_log``; the file is
read directly, so it works whether or not the inference process runs). Live metrics from
feedback are ``%evaluate NAME --live`` (``pipelines.py``). Settings are the KernelMagics ones.
"""

from __future__ import annotations

import argparse

from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from kernel_magics import api, display
from kernel_magics.argtypes import positive_int
from kernel_magics.display import quality as views
from kernel_magics.magics._args import FeatureMagics, View, front_end, word

VIEWS: list[View] = []  # %log displays; api.inference_log returns the DataFrame itself


@magics_class
class QualityMagics(FeatureMagics):
    @line_magic
    @magic_arguments()
    @argument("name", type=word, metavar="NAME", help="a model")
    @argument("--since", metavar="WINDOW", help="requests of the last 90s, 30m, 1h, 2d …")
    @argument("--limit", type=positive_int, default=20, help="the newest N rows (default 20)")
    @front_end
    def log(self, args: argparse.Namespace) -> None:
        """The newest logged requests of a model: time, version, request id, row, input,
        output, latency. Which share of requests is logged: the log_sample setting, or
        %deploy NAME --log-sample F. The whole log as a DataFrame: api.inference_log(NAME).

        Examples::

            %log digits
            %log digits --since 1h --limit 50
        """
        settings = self.kernel_magics.settings()
        frame = api.inference_log(args.name, since=args.since, limit=args.limit, settings=settings)
        display.show(views.log_text(args.name, frame), views.log_html(args.name, frame))


MAGICS = QualityMagics
