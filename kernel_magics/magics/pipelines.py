"""``%pipeline``, ``%evaluate`` and ``%compare``: recorded papermill runs, evaluation of a
version on held-out data (or cross-validation of its recipe), versions side by side.

Parses the line, evaluates the notebook's expressions, calls ``kernel_magics.api`` and returns
its records, which ``display/evaluation.py`` renders (registered with IPython's formatters by type
name, so nothing here imports torch, scikit-learn, MLflow or papermill until a magic runs). Settings
and progress are the ``KernelMagics`` ones (``%config KernelMagics.*``).
"""

from __future__ import annotations

import argparse
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from kernel_magics import api
from kernel_magics.argtypes import positive_int
from kernel_magics.display import evaluation as display_eval
from kernel_magics.display import quality
from kernel_magics.magics._args import FeatureMagics, View, front_end, word

# (module, class, text view, HTML view): registered by name, resolved when first shown
VIEWS: list[View] = [
    (module, name, getattr(display_eval, f"{view}_text"), getattr(display_eval, f"{view}_html"))
    for module, name, view in (
        ("kernel_magics.pipelines.record", "PipelineRecord", "pipeline"),
        ("kernel_magics.pipelines.rerun", "RerunResult", "rerun"),
        ("kernel_magics.evaluation.evaluate", "EvaluationResult", "evaluation"),
        ("kernel_magics.evaluation.cv", "CVResult", "cv"),
        ("kernel_magics.evaluation.compare", "Comparison", "comparison"),
    )
] + [("kernel_magics.evaluation.live", "LiveEvaluation", quality.live_text, quality.live_html)]


@magics_class
class PipelineMagics(FeatureMagics):
    """Pipelines, evaluation and comparison; settings are the KernelMagics ones."""

    def _progress(self) -> str:
        from kernel_magics.pipelines.execute import progress_mode

        return progress_mode(self.kernel_magics.progress)

    @line_magic
    @magic_arguments()
    @argument("what", nargs="+", metavar="NOTEBOOK | rerun RUN_ID", help="what to execute")
    @argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a notebook parameter (numbers, True/False/None are read as such)",
    )
    @argument("--name", type=word, help="the run's name (default: the notebook's)")
    @argument("--output", type=word, metavar="PATH", help="also write the executed notebook here")
    @argument(
        "--source",
        action="store_true",
        help="rerun: execute the file at the recorded path, not the copy stored with the run",
    )
    @argument(
        "--allow-extra-params",
        action="store_true",
        help="pass -p names the notebook's parameters cell does not set",
    )
    @front_end
    def pipeline(self, args: argparse.Namespace) -> Any:
        """Execute a notebook with papermill as one recorded MLflow run, or rerun one.

        The notebook runs in a fresh kernel of this environment with these settings; its
        parameters go after its cell tagged `parameters` (a name that cell does not set is
        refused unless --allow-extra-params). The run (experiment
        kernel-magics-pipelines) records the parameters, provenance (git commit, package
        versions, SHA-256 of input files, seeds), the input and executed notebooks, metrics the
        notebook logs with kernel_magics.pipelines.log_metric and the versions it registered.
        A failing cell marks the run FAILED (the executed notebook is stored) and is reported in
        one line. `rerun RUN_ID` executes the stored notebook again with the recorded
        parameters (-p overrides one) and compares the metrics of both runs.

        Examples::

            r = %pipeline notebooks/pipelines/train.ipynb -p epochs 5 -p lr 0.01
            %pipeline train.ipynb -p name digits --name nightly-train
            %pipeline rerun {r.run_id}
        """
        parameters = _parameters(args.parameter)
        settings = self.kernel_magics.settings()
        if args.what[0] == "rerun":
            if len(args.what) != 2:
                raise UsageError("use: %pipeline rerun RUN_ID")
            return api.pipeline_rerun(
                word(args.what[1]),
                parameters=parameters,
                use_source=args.source,
                output=args.output,
                progress=self._progress(),
                settings=settings,
            )
        if len(args.what) != 1:
            raise UsageError("use: %pipeline NOTEBOOK [-p NAME VALUE ...] (one notebook)")
        if args.source:
            raise UsageError("--source applies to `%pipeline rerun RUN_ID` only")
        return api.pipeline_run(
            word(args.what[0]),
            parameters,
            run_name=args.name,
            output=args.output,
            progress=self._progress(),
            allow_extra_params=args.allow_extra_params,
            settings=settings,
        )

    @line_magic
    @magic_arguments()
    @argument("target", type=word, metavar="NAME[@VERSION|@ALIAS]", help="the version")
    @argument("--data", nargs=2, metavar="EXPR", help="X_EXPR Y_EXPR (held out)")
    @argument("--live", action="store_true", help="live metrics from feedback, per version")
    @argument("--since", metavar="WINDOW", help="with --live: requests of the last 90s/30m/1h/2d")
    @argument("--cv", type=positive_int, metavar="K", help="K-fold cross-validation instead")
    @argument("--model", metavar="EXPR", help="with --cv: a fresh model per fold, e.g. Net()")
    @argument("--batch-size", type=positive_int, default=4096, help="rows per forward")
    @front_end
    def evaluate(self, args: argparse.Namespace) -> Any:
        """Evaluate a registered version on held-out data, in this kernel.

        The version is loaded from the store after its hash check, exactly as %deploy would
        serve it. Classification: accuracy, macro and per-class precision/recall/F1, ROC AUC
        where it applies, the confusion matrix; regression: MSE, MAE, R², a residual plot (all
        computed by scikit-learn). Logged to the version: an evaluation run (experiment
        kernel-magics-evaluations) and tags km.eval.<metric>.

        --cv K: K-fold cross-validation of the version's recipe (its recorded
        hyper-parameters) on --data, training a fresh --model EXPR per fold; mean ± std.

        --live [--since W]: no data; the served versions' accuracy and macro F1 (or MSE and
        MAE) over the logged requests that got feedback (api.feedback), per version, logged to
        each version's run as live_* metrics.

        Examples::

            e = %evaluate digits --data X_test y_test
            %evaluate digits@2 --data X_test y_test
            %evaluate digits --data X y --cv 5 --model Net()
            %evaluate digits --live --since 1h
        """
        km = self.kernel_magics
        if args.live:
            if args.data or args.cv is not None or args.model:
                raise UsageError("--live reads the inference log and feedback: no --data or --cv")
            if "@" in args.target:
                raise UsageError("--live shows every version of the model: give NAME alone")
            return api.evaluate_live(args.target, since=args.since, settings=km.settings())
        if args.since:
            raise UsageError("--since is for --live")
        if not args.data:
            raise UsageError("give --data X_EXPR Y_EXPR (or --live for feedback)")
        X = km._eval(args.data[0], "the features")
        y = km._eval(args.data[1], "the targets")
        if args.cv is None:
            if args.model:
                raise UsageError("--model is for --cv (the version itself is evaluated)")
            return api.evaluate(
                args.target, X, y, batch_size=args.batch_size, settings=km.settings()
            )
        if args.cv < 2:
            raise UsageError("--cv needs at least 2 folds")
        if not args.model:
            raise UsageError("--cv needs --model EXPR: a fresh model per fold, e.g. --model Net()")
        km._eval(args.model, "the model")  # a typo fails here, before any training

        def factory() -> Any:
            return km._eval(args.model, "the model")

        return api.evaluate(args.target, X, y, cv=args.cv, model=factory, settings=km.settings())

    @line_magic
    @magic_arguments()
    @argument("name", type=word, metavar="NAME", help="a registered model")
    @argument("versions", nargs="+", type=word, metavar="VERSION", help="two or more (or aliases)")
    @front_end
    def compare(self, args: argparse.Namespace) -> Any:
        """Versions of a model side by side; the better value of each row is highlighted.

        Rows: training metrics, evaluation metrics (km.eval.* from %evaluate, km.cv.* from
        --cv), params, lineage (parent, recipe), size on disk, parameter count, and the latency
        of one forward (in this kernel, batch 1, median of 50).

        Examples::

            %compare digits 1 2
            %compare digits 1 2 production
        """
        if len(args.versions) < 2:
            raise UsageError("give at least two versions to compare")
        settings = self.kernel_magics.settings()
        return api.compare(args.name, *args.versions, settings=settings)


def _parameters(pairs: list[list[str]]) -> dict[str, Any]:
    from kernel_magics.pipelines.run import parse_value

    return {word(name): parse_value(word(value)) for name, value in pairs}


MAGICS = PipelineMagics
