"""``%drift``: a served model's current inputs and predictions against its reference profile.

Parses the line, evaluates --data in the notebook's namespace, calls ``kernel_magics.api.drift``
and returns its ``DriftReport``, which ``display/drift.py`` renders.
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from kernel_magics import api
from kernel_magics.display import drift as display_drift
from kernel_magics.magics._args import FeatureMagics, View, front_end, word

VIEWS: list[View] = [
    (
        "kernel_magics.quality.drift",
        "DriftReport",
        display_drift.drift_report_text,
        display_drift.drift_report_html,
    )
]


@magics_class
class DriftMagics(FeatureMagics):
    """Drift; settings are the KernelMagics ones."""

    @line_magic
    @magic_arguments()
    @argument("name", type=word, metavar="NAME[@VERSION|@ALIAS]", help="the model (version)")
    @argument("--data", metavar="EXPR", help="current rows: an array or DataFrame")
    @argument(
        "--window",
        type=word,
        metavar="W",
        help="logged rows of the last W ('1h', '30m', '2d') or the last N ('5000rows')",
    )
    @front_end
    def drift(self, args: argparse.Namespace) -> Any:
        """Has what the model sees moved away from what it was trained on?

        Compares current rows (the version's logged requests, or --data X) and the model's
        predictions on them with the version's reference profile (captured by %train on the
        training split, or by %register --reference X): per feature KS (numbers) or chi²
        (categories) and PSI, flagged when p < drift_p_value and PSI ≥ drift_psi (%config
        KernelMagics). A bare NAME is the live version, else the newest. Image and sequence
        rows are compared by each row's mean, std, min and max.

        Examples::

            %drift churn                      # every logged request of the live version
            %drift churn --window 1h
            %drift churn --window 5000rows
            d = %drift churn --data X_new
            %drift churn@2 --data X_new
            d.flagged
        """
        km = self.kernel_magics
        name, _, version = args.name.partition("@")
        data = None if args.data is None else km._eval(args.data, "--data")
        return api.drift(
            name,
            window=args.window,
            data=data,
            version=version or None,
            settings=km.settings(),
        )


MAGICS = DriftMagics
