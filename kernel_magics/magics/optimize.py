"""``%optimize``: quantize, prune, distill or export a registered version from the notebook.

Parses the line, evaluates the notebook expressions, calls ``api.optimize`` and shows
``display/optimize.py``'s table; registered by ``load_ipython_extension``. Nothing heavy is
imported here: the optimization libraries load when a method runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from kernel_magics import api
from kernel_magics.argtypes import number, positive_int
from kernel_magics.display import optimize as display_optimize
from kernel_magics.magics._args import FeatureMagics, View, front_end, word

_POSITIVE = number(float, 0, inclusive=False)


def _fraction(text: str, *, closed: bool = False) -> float:
    """An argparse type: a number in (0, 1), or [0, 1] when ``closed``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 <= value <= 1 if closed else 0 < value < 1):
        raise argparse.ArgumentTypeError(
            f"must be between 0 and 1{' (inclusive)' if closed else ''}, got {text}"
        )
    return value


def _alpha(text: str) -> float:
    return _fraction(text, closed=True)


@magics_class
class OptimizeMagics(FeatureMagics):
    """``%optimize``; settings (home, store, progress) are the KernelMagics ones."""

    def _eval(self, expr: str | None, what: str) -> Any:
        return None if expr is None else self.kernel_magics._eval(expr, what)

    @line_magic
    @magic_arguments()
    @argument("target", metavar="NAME[@VERSION|@ALIAS]", help="the version to optimize")
    @argument("--quantize", choices=("dynamic", "static"), help="int8 (ONNX, onnxruntime)")
    @argument("--calibration", metavar="EXPR", help="rows to calibrate static quantization on")
    @argument("--prune", type=_fraction, metavar="AMOUNT", help="fraction to remove, e.g. 0.5")
    @argument("--structured", action="store_true", help="drop whole Linear neurons (shrinks)")
    @argument("--finetune-epochs", type=positive_int, default=0, help="after pruning, on --data")
    @argument("--distill", action="store_true", help="train --student on this version's outputs")
    @argument("--student", metavar="EXPR", help="the student model: Small(), net")
    @argument("--temperature", type=_POSITIVE, default=4.0, help="default: %(default)s")
    @argument("--alpha", type=_alpha, default=0.5, help="teacher's weight, default %(default)s")
    @argument("--epochs", type=positive_int, default=20, help="distillation, default %(default)s")
    @argument("--export", choices=("onnx",), help="ONNX served by onnxruntime (+ --quantize)")
    @argument("--data", nargs=2, metavar="EXPR", help="X_EXPR Y_EXPR: training and validation")
    @argument("--name", type=word, help="register under this name (default: the same model)")
    @argument("--seed", type=int, default=0, help="default: %(default)s")
    @front_end
    def optimize(self, args: argparse.Namespace) -> Any:
        """Make an optimized new version of a registered version and show the trade-off.

        One method per call; the new version is tagged with its parent and recipe, and the
        table compares it with the parent: size on disk, parameters, p50 latency of one forward
        at batch 1 and 64 (one thread, as the inference process serves it) and accuracy/F1 (or
        MSE) on the held-out 20% of --data (without --data: no validation data). The figures
        are logged to the new version's run and tagged km.opt.* on it.

        --quantize dynamic|static: int8 ONNX served by onnxruntime (static calibrates on
        --calibration rows, else on --data). --prune AMOUNT: unstructured zeroes weights (does
        not shrink); --structured drops the lowest-L2 neurons of Linear layers (nn.Sequential
        stacks), optionally --finetune-epochs N on --data. --distill --student EXPR --data X Y:
        trains the student on softened outputs and labels, beside the same student trained on
        labels only. --export onnx: fp32 ONNX checked against torch (max abs diff <= 1e-4).

        Examples::

            %optimize digits@1 --quantize dynamic --data X y
            %optimize digits@1 --quantize static --calibration X[:500] --data X y
            %optimize digits@1 --prune 0.5 --structured --finetune-epochs 2 --data X y
            %optimize digits@1 --distill --student Small() --data X y --epochs 20
            %optimize digits@1 --export onnx --data X y
            r = %optimize digits --export onnx --quantize dynamic
        """
        if args.structured and args.prune is None:
            raise UsageError("--structured goes with --prune AMOUNT (see %optimize?)")
        if args.student and not args.distill:
            raise UsageError("--student goes with --distill (see %optimize?)")
        data = args.data or (None, None)
        return api.optimize(
            args.target,
            quantize=args.quantize,
            calibration=self._eval(args.calibration, "--calibration"),
            prune=args.prune,
            structured=args.structured,
            finetune_epochs=args.finetune_epochs,
            distill=args.distill,
            student=self._eval(args.student, "--student"),
            temperature=args.temperature,
            alpha=args.alpha,
            epochs=args.epochs,
            export=args.export,
            X=self._eval(data[0], "the features"),
            y=self._eval(data[1], "the targets"),
            name=args.name,
            seed=args.seed,
            progress=self.kernel_magics.progress,
            settings=self.kernel_magics.settings(),
        )


VIEWS: list[View] = [
    (
        "kernel_magics.optimize",
        "OptimizeResult",
        display_optimize.optimize_text,
        display_optimize.optimize_html,
    )
]


MAGICS = OptimizeMagics
