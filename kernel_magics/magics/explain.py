"""``%explain``: per-feature attributions of a registered version for some rows, computed in
this kernel (Integrated Gradients through Captum).

Parses the line, evaluates X in the notebook's namespace, calls ``kernel_magics.api`` and
returns its ``Explanation``, which ``display/explain.py`` renders (registered with IPython's
formatters by type name, so nothing here imports torch or captum until the magic runs).
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from kernel_magics import api
from kernel_magics.argtypes import positive_int
from kernel_magics.display import explain as display_explain
from kernel_magics.magics._args import FeatureMagics, View, front_end, word

VIEWS: list[View] = [
    (
        "kernel_magics.explain.record",
        "Explanation",
        display_explain.explanation_text,
        display_explain.explanation_html,
    )
]


@magics_class
class ExplainMagics(FeatureMagics):
    """Explanations; settings are the KernelMagics ones."""

    @line_magic
    @magic_arguments()
    @argument("name", type=word, metavar="NAME[@VERSION|@ALIAS]", help="the version")
    @argument("expr", nargs="+", metavar="X", help="rows to explain: an array, tensor or DataFrame")
    @argument(
        "--target",
        type=word,
        metavar="CLASS",
        help="a class label or output index (default: each row's predicted class; output 0)",
    )
    @argument(
        "--baseline",
        choices=("zeros", "mean"),
        default="zeros",
        help="the input the path starts from: zeros, or the mean row of X (default: zeros)",
    )
    @argument("--steps", type=positive_int, default=50, help="integration steps, default 50")
    @argument("--rows", type=positive_int, metavar="K", help="explain the first K rows of X")
    @front_end
    def explain(self, args: argparse.Namespace) -> Any:
        """Which input features moved a registered version's output, row by row.

        Integrated Gradients (Captum) on the version loaded in this kernel after its hash
        check, exactly as %deploy would serve it; the inference process is not involved. A
        bare NAME is the live version (what %predict answers with), else the newest.
        Classifiers: each row's predicted class is explained unless --target names a class
        (its label, or an output index); regressors: output 0 (--target K for another).
        Shows a table and a bar plot of the attributions per feature (image-shaped rows: a
        heat map per row). The attributions add up to the output's change from the baseline
        (the delta column says how closely; more --steps bring it nearer 0). Float inputs
        only: token ids have no gradient. At most 200 rows at once.

        Examples::

            x = %explain cancer X_test[:5]
            %explain digits@2 X_test[:3] --target 7
            %explain cancer X_test[:5] --target malignant --baseline mean
            x.attributions, x.feature_names
        """
        km = self.kernel_magics
        X = km._eval(" ".join(args.expr), "the input")
        return api.explain(
            args.name,
            X,
            target=args.target,
            baseline=args.baseline,
            steps=args.steps,
            rows=args.rows,
            settings=km.settings(),
        )


MAGICS = ExplainMagics
