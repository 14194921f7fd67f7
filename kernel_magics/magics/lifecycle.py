"""The lifecycle magics: ``%train``, ``%register``, ``%deploy``, ``%rollback``, ``%undeploy``,
``%predict``, ``%models``, ``%history`` and ``%serve`` (and the ``%config KernelMagics`` traits).

This module only parses arguments, evaluates the user's expressions, calls ``kernel_magics.api``
and hands what came back to ``kernel_magics.display``. Every mistake a user can make surfaces as
IPython's ``UsageError`` with one line (IPython shows that class, and only that exact class,
without a traceback). Settings are traitlets, so ``%config KernelMagics.home = "/tmp/x"`` works;
a trait left at its default yields to ``KERNEL_MAGICS_*`` and the built-in defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, kwds, magic_arguments
from traitlets import Bool, CaselessStrEnum, Float, Int, Unicode
from traitlets.config.configurable import Configurable

from kernel_magics import api, commands, display
from kernel_magics.argtypes import non_negative_float, number, positive_int, version
from kernel_magics.config import Settings, load_settings
from kernel_magics.errors import InvalidInput, TrainingInterrupted
from kernel_magics.magics._args import View, arguments, front_end, word
from kernel_magics.magics._results import predictions_view, training_stopped
from kernel_magics.preprocess import ENCODINGS, SCALES
from kernel_magics.records import TransitionResult
from kernel_magics.registration import TASKS as REGISTER_TASKS
from kernel_magics.registration import RegisterResult
from kernel_magics.tracking import TrainResult
from kernel_magics.training.config import LOSS_TASKS, OPTIMIZERS, TrainConfig, check_loss
from kernel_magics.training.config import TASKS as TRAIN_TASKS
from kernel_magics.training.progress import make_progress
from kernel_magics.widgets.front_end import widgets_render

_DEFAULTS = Settings()
_TRAIN_USAGE_FORMAT = (
    "train MODEL_EXPR --data X_EXPR [Y_EXPR] [--target COLUMN] [--name NAME]\n"
    "             [--epochs N] [--lr LR] [--batch-size N] [--optimizer {%s}]\n"
    "             [--weight-decay WD] [--val-split FRACTION] [--seed SEED]\n"
    "             [--task {%s}] [--loss LOSS]\n"
    "             [--nproc N [--nnodes M --rdzv-endpoint HOST:PORT]]"
)
_TRAIN_USAGE = _TRAIN_USAGE_FORMAT % (",".join(OPTIMIZERS), ",".join(TRAIN_TASKS))
_TRAIN = TrainConfig()
_POSITIVE_FLOAT = number(float, 0, inclusive=False)


def _labels(tokens: list[str] | None) -> list | None:
    """``--classes 0 1 2`` → [0, 1, 2]; ``cat dog`` → ["cat", "dog"]; ``[0, 1]`` as JSON."""
    if tokens is None:
        return None
    if len(tokens) == 1 and word(tokens[0]).startswith("["):
        try:
            return json.loads(word(tokens[0]))
        except ValueError as err:
            raise InvalidInput(f"--classes is not a valid JSON list: {err}") from None
    labels = []
    for token in tokens:
        try:
            labels.append(json.loads(token))  # numbers and quoted strings
        except ValueError:
            labels.append(word(token))  # a bare word is a string label
    return labels


def _lower_word(text: str) -> str:
    return word(text).lower()


def _setting(kind: type, field: str, help_text: str) -> Any:
    """A %config trait mirroring one Settings field (its default is the field's default)."""
    default = getattr(_DEFAULTS, field)
    return kind(str(default) if kind is Unicode else default, help=help_text).tag(config=True)


# -- the magics ---------------------------------------------------------------------------------
@magics_class
class KernelMagics(Magics, Configurable):
    """Train, version, deploy, serve and roll back PyTorch models from a notebook."""

    # One trait per Settings field, same name and default; see ``settings()``.
    home = _setting(Unicode, "home", "folder of the embedded store and the process's state")
    tracking_uri = _setting(Unicode, "tracking_uri", "MLflow tracking URI ('': embedded store)")
    target = _setting(Unicode, "target", "where deployed models run (local: the built-in process)")
    ray_address = _setting(Unicode, "ray_address", "Ray cluster of the ray target (its address)")
    host = _setting(Unicode, "host", "address the inference process listens on")
    port = _setting(Int, "port", "port of the inference process (0: any free port)")
    allow_remote = _setting(Bool, "allow_remote", "allow a host other than loopback (token always)")
    workers = _setting(Int, "workers", "worker processes of the inference process")
    autostart = _setting(Bool, "autostart", "%load_ext starts the inference process")
    max_batch_size = _setting(Int, "max_batch_size", "largest batch the batcher forms")
    max_wait_ms = _setting(Float, "max_wait_ms", "how long the batcher waits to fill a batch")
    torch_threads = _setting(Int, "torch_threads", "torch threads per worker")
    predict_requires_token = _setting(Bool, "predict_requires_token", "predictions need the token")
    max_body_bytes = _setting(Int, "max_body_bytes", "largest request body accepted")
    max_rows = _setting(Int, "max_rows", "most rows one prediction request may carry")
    request_timeout_s = _setting(Float, "request_timeout_s", "seconds before a request gives up")
    progress = CaselessStrEnum(
        ["auto", "widget", "text", "none"],
        default_value="auto",
        help="How %train reports progress: a widget, text lines, nothing, or auto.",
    ).tag(config=True)

    _trained_once = False  # the first %train of a kernel pays a one-time warm-up

    def settings(self) -> Settings:
        """Settings for this kernel: traits changed with %config win over the environment."""
        changed = {}
        for f in dataclasses.fields(Settings):
            value = getattr(self, f.name)
            if value != self.trait_defaults(f.name):
                changed[f.name] = value
        return load_settings(**changed)

    def _eval(self, expr: str, what: str) -> Any:
        """Evaluate a user expression in the notebook's namespace; a typo is a UsageError, an
        exception raised by the user's own code keeps its traceback."""
        assert self.shell is not None  # magics run inside a shell
        try:
            return self.shell.ev(expr)
        except (NameError, SyntaxError, AttributeError) as err:
            raise UsageError(f"cannot evaluate {what} `{expr}`: {display.one_line(err)}") from None

    # -- training and registration --------------------------------------------------------------
    # Ranges are checked while parsing where a bad value would otherwise only fail after an
    # MLflow run was opened; val-split's bounds are the training code's to decide. Defaults are
    # TrainConfig's, and the options are named like its fields (the magic builds it from them).
    @line_magic
    @magic_arguments()
    @kwds(usage=_TRAIN_USAGE)  # MODEL_EXPR first, as every example writes it
    @argument("model", metavar="MODEL_EXPR", help="an nn.Module expression: Net(), model")
    @argument("--data", nargs="+", required=True, metavar="EXPR", help="X_EXPR [Y_EXPR]")
    @argument("--target", type=word, help="target column of a DataFrame X (instead of Y_EXPR)")
    @argument("--name", type=word, help="model name (default: class name, lowercased)")
    @argument("--epochs", type=positive_int, default=_TRAIN.epochs, help="default: %(default)s")
    @argument(
        "--lr", type=_POSITIVE_FLOAT, default=_TRAIN.lr, help="learning rate, default %(default)s"
    )
    @argument(
        "--batch-size", type=positive_int, default=_TRAIN.batch_size, help="default: %(default)s"
    )
    @argument(
        "--optimizer",
        type=_lower_word,
        choices=OPTIMIZERS,
        default=_TRAIN.optimizer,
        help="default: %(default)s",
    )
    @argument(
        "--weight-decay",
        type=non_negative_float,
        default=_TRAIN.weight_decay,
        help="default: %(default)s",
    )
    @argument(
        "--val-split", type=float, default=_TRAIN.val_split, help="held out, default %(default)s"
    )
    @argument("--seed", type=int, default=_TRAIN.seed, help="default: %(default)s")
    @argument("--task", choices=TRAIN_TASKS, help="default: inferred")
    @argument(
        "--loss",
        metavar="LOSS",
        help=f"{', '.join(LOSS_TASKS)}, or a callable (outputs, targets) -> scalar tensor of the "
        "namespace; default: cross_entropy for classification, mse for regression",
    )
    # preprocessing registered with the model (preprocess.py, training/scaling.py)
    @argument(
        "--scale",
        type=_lower_word,
        choices=SCALES,
        default=_TRAIN.scale,
        help="scale float features (and regression targets) with training-split statistics, "
        "inside the registered model; default %(default)s",
    )
    @argument(
        "--encode",
        type=_lower_word,
        choices=ENCODINGS,
        help="one-hot encode string/categorical DataFrame columns, at training and serving",
    )
    # distributed training (training/distributed.py): the run is still logged and registered
    # once, by this kernel
    @argument(
        "--nproc",
        type=positive_int,
        default=_TRAIN.nproc,
        help="processes per node under torchrun (DDP: gloo on CPU, NCCL on GPUs); default 1",
    )
    @argument("--nnodes", type=positive_int, default=_TRAIN.nnodes, help="nodes; default 1")
    @argument(
        "--rdzv-endpoint",
        type=word,
        metavar="HOST:PORT",
        help="rendezvous address, the same on every node (needed with --nnodes > 1)",
    )
    @front_end
    def train(self, args: argparse.Namespace) -> TrainResult:
        """Train a PyTorch model on arrays, tensors or a DataFrame and register a new version.

        MODEL_EXPR and the data expressions are evaluated in the notebook's namespace. X holds
        rows of any shape (N, ...): tabular rows, images, sequences, int64 token ids. The run
        (parameters, per-epoch metrics, the model) is logged to MLflow and the model becomes the
        next version of NAME; the result carries the version, run id, final metrics and the
        trained model. The Stop button of the progress widget (or interrupting the kernel) ends
        the training after the current batch: the run is recorded as KILLED and nothing is
        registered. Float features are standardized (--scale) and regression targets too, with
        statistics of the training split stored inside the registered model: the served
        version takes raw rows and answers in raw units, and r.predict(X) gives the same here.

        Examples:

            r = %train Net() --data X y --epochs 5 --lr 1e-3 --name digits
            %train model --data df --target price --task regression
            %train Net(hidden=128) --data X_train y_train --epochs {epochs} --name {name}
            %train Tagger() --data tokens tags --task classification --loss my_loss
            %train Net() --data X y --epochs 5 --nproc 2
            %train Net() --data houses --target price --encode onehot   # raw rows in, raw out
        """
        if len(args.data) > 2:
            raise UsageError(
                f"--data takes X_EXPR and optionally Y_EXPR, got {len(args.data)} expressions"
            )
        if len(args.data) == 2 and args.target:
            raise UsageError("give the target either as Y_EXPR or as --target, not both")
        options = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
        config = TrainConfig(**{**options, "loss": self._loss(args.loss)})
        model = self._eval(args.model, "the model")
        X = self._eval(args.data[0], "the features")
        y = self._eval(args.data[1], "the targets") if len(args.data) == 2 else args.target
        settings = self.settings()
        reporter = make_progress(self.progress)
        try:
            result = api.train(
                model,
                X,
                y,
                name=args.name or type(model).__name__.lower(),
                config=config,
                progress=reporter,
                settings=settings,
            )
        except TrainingInterrupted as err:
            raise training_stopped(reporter, err, settings) from None
        if not KernelMagics._trained_once and result.bookkeeping_seconds > 1.0:
            result.notes.append(display.warm_up_note(result.bookkeeping_seconds))
        KernelMagics._trained_once = True
        conclude = getattr(reporter, "conclude", None)
        if conclude is not None:  # the widget's title: what was registered
            conclude(f"{result.name} v{result.version} registered")
        return result

    def _loss(self, text: str | None) -> Any:
        """A built-in loss by name, or the callable the notebook defines under that name."""
        if text is None or word(text) in LOSS_TASKS:
            return None if text is None else word(text)
        try:
            return self._eval(text, "the loss")
        except UsageError:
            if text.isidentifier():  # an unknown name: say which losses are built in
                check_loss(text, None)
            raise

    @line_magic
    @magic_arguments()
    @argument("model", metavar="MODEL_EXPR", help="a trained nn.Module expression")
    @argument("--name", type=word, required=True, help="model name")
    @argument(
        "--example",
        required=True,
        metavar="EXPR",
        help="a few input rows in the dtype the model takes (array, tensor, DataFrame)",
    )
    @argument("--task", choices=REGISTER_TASKS, help="what the outputs are (default: not said)")
    @argument(
        "--classes", nargs="+", metavar="LABEL", help="labels in output order: 0 1 2, or a list"
    )
    @argument("--metrics", metavar="JSON|EXPR", help="""'{"accuracy": 0.93}' or a dict name""")
    @argument("--params", metavar="JSON|EXPR", help="""'{"epochs": 3}' or a dict name""")
    @argument("--parent", type=word, metavar="NAME@V", help="the version it was derived from")
    @argument("--recipe", nargs="+", metavar="TEXT", help="how it was made, in a few words")
    @front_end
    def register(self, args: argparse.Namespace) -> RegisterResult:
        """Register a model trained anywhere (your own loop, a library) as a new version.

        MODEL_EXPR and --example are evaluated in the notebook's namespace. One MLflow run
        records the metrics and params; the model is exported like a %train result (pt2 in eval
        mode, or MLflow's pickle format with the reason said) and tagged with its content hash,
        task, classes, parent and recipe. %deploy, %predict and %rollback then treat it like
        any other version.

        Examples::

            r = %register net --name digits-own --example X[:5] --task classification
            %register net --name digits-own --example X[:5] --metrics '{"accuracy": 0.95}'
            %register net --name digits-ft --example X[:5] --parent digits@1 --recipe 'lr 1e-4'
        """
        return api.register(
            self._eval(args.model, "the model"),
            self._eval(args.example, "the example"),
            name=args.name,
            task=args.task,
            classes=_labels(args.classes),
            metrics=self._mapping(args.metrics, "--metrics"),
            params=self._mapping(args.params, "--params"),
            parent=args.parent,
            recipe=" ".join(map(word, args.recipe)) if args.recipe else None,
            settings=self.settings(),
        )

    def _mapping(self, text: str | None, option: str) -> Any:
        """A JSON object, or an expression of the namespace (a dict)."""
        if text is None:
            return None
        text = word(text)
        if text.startswith("{"):
            try:
                return json.loads(text)
            except ValueError as err:
                raise InvalidInput(f"{option} is not valid JSON: {err}") from None
        return self._eval(text, option)

    # -- deployment -----------------------------------------------------------------------------
    @line_magic
    @magic_arguments()
    @argument(
        "target",
        metavar="NAME[@VERSION|@ALIAS]",
        help="model; newest version unless a version or alias follows @",
    )
    @argument("--max-batch-size", type=positive_int, help="largest batch for this model")
    @argument("--max-wait-ms", type=non_negative_float, help="batching wait for this model")
    @argument(
        "--canary",
        type=positive_int,
        metavar="PERCENT",
        help="load beside the live version and send it PERCENT%% of requests (1-99)",
    )
    @front_end
    def deploy(self, args: argparse.Namespace) -> None:
        """Make a version live in the background inference process (started if needed).

        The version is loaded and warmed before it takes traffic; requests never fail during the
        swap, and if it cannot be loaded the live version keeps serving.

        Examples::

            %deploy digits
            %deploy digits@2
            %deploy digits@challenger --max-batch-size 128
            %deploy digits@3 --canary 10     # v3 answers 10% of requests; %promote or %rollback
        """
        result = api.deploy(
            args.target,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            canary=args.canary,
            settings=self.settings(),
        )
        _show_transition(result)

    @line_magic
    @magic_arguments()
    @argument("name", type=word, metavar="NAME", help="model whose canary becomes live")
    @front_end
    def promote(self, args: argparse.Namespace) -> None:
        """Make the running canary (``%deploy NAME@V --canary P``) live: the same hot swap as
        a deploy. ``%rollback NAME`` instead drops the canary.

        Example::

            %promote digits
        """
        _show_transition(api.promote(args.name, settings=self.settings()))

    @line_magic
    @magic_arguments()
    @argument("name", type=word, metavar="NAME", help="model to roll back")
    @argument(
        "--to",
        type=version,
        metavar="VERSION",
        help="version to make live (default: the one live before)",
    )
    @front_end
    def rollback(self, args: argparse.Namespace) -> None:
        """Make the previously live version (or --to VERSION) live again, with the same hot swap.

        Examples::

            %rollback digits
            %rollback digits --to 1
        """
        result = api.rollback(args.name, to=args.to, settings=self.settings())
        _show_transition(result)

    @line_magic
    @magic_arguments()
    @argument("name", type=word, metavar="NAME", help="model to stop serving")
    @front_end
    def undeploy(self, args: argparse.Namespace) -> None:
        """Stop serving a model and clear its live alias; the versions stay registered.

        Example::

            %undeploy digits
        """
        result = api.undeploy(args.name, settings=self.settings())
        display.show(display.transition_line(result), display.transition_html(result))

    # -- inference ------------------------------------------------------------------------------
    @line_magic
    @magic_arguments()
    @argument("name", type=word, metavar="NAME", help="a deployed model")
    @argument(
        "expr",
        nargs="+",
        metavar="EXPR",
        help="rows to predict: an array, tensor or DataFrame expression",
    )
    @argument("--raw", action="store_true", help="the model's outputs instead of class labels")
    @front_end
    def predict(self, args: argparse.Namespace) -> Any:
        """Predict with the live version of a model through its HTTP endpoint.

        Returns a numpy array: class labels for classifiers, outputs with --raw or for regressors.

        Examples::

            labels = %predict digits X[:3]
            scores = %predict digits X_test --raw
        """
        X = self._eval(" ".join(args.expr), "the input")
        values = api.predict(args.name, X, raw=args.raw, settings=self.settings())
        return predictions_view(values, args.name, raw=args.raw)

    # -- what exists ----------------------------------------------------------------------------
    @line_magic
    @magic_arguments()
    @argument("--json", action="store_true", help="print JSON instead of a table")
    @argument("--static", action="store_true", help="the table, even where widgets render")
    @front_end
    def models(self, args: argparse.Namespace) -> None:
        """Every registered model and version with its key metrics and which version is live
        (the production alias, which the inference process serves; a note says when it serves
        something else).

        In JupyterLab or Notebook: a registry browser (versions with metrics, params, size,
        lineage and tags; two versions side by side with their training curves; Deploy,
        Rollback and Undeploy buttons). Under papermill, nbconvert or a terminal, and with
        --static: the table.

        Examples::

            %models
            %models --static
            %models --json
        """
        settings = self.settings()
        if not args.json and not args.static and widgets_render():
            from kernel_magics.widgets.registry import RegistryBrowser

            RegistryBrowser(settings).show()
            return
        summaries = api.models(settings=settings)
        if args.json:
            display.show(display.to_json(summaries))
        else:
            display.show(display.models_text(summaries), display.models_html(summaries))

    @line_magic
    @magic_arguments()
    @argument("name", type=word, metavar="NAME", help="a registered model")
    @argument("--json", action="store_true", help="print JSON instead of a table")
    @front_end
    def history(self, args: argparse.Namespace) -> None:
        """The deployment history of a model: every deploy, rollback and undeploy, oldest first.

        Example::

            %history digits
        """
        events = api.history(args.name, settings=self.settings())
        if args.json:
            display.show(display.to_json(events))
        else:
            display.show(
                display.history_text(args.name, events), display.history_html(args.name, events)
            )

    @line_magic
    @magic_arguments()
    @arguments(commands.SERVE_ARGUMENTS)
    @front_end
    def serve(self, args: argparse.Namespace) -> None:
        """The serving target (by default the background inference process): its status (with
        requests and rows per token), start, stop, recent log lines, and tokens for plain HTTP
        clients (curl, scripts) — the home token, or named tokens for other callers.

        Examples::

            %serve status
            %serve start --workers 2
            %serve logs --lines 20
            %serve token
            %serve token --new dashboard
            %serve token --list
        """
        rendered = commands.run_serve(args, self.settings())
        if args.json and rendered.document is not None:
            display.show(display.to_json(rendered.document))
        elif args.action == "logs":
            display.show(rendered.text, display.logs_html(rendered.text))
        else:
            display.show(rendered.text, rendered.html)


VIEWS: list[View] = [
    (
        "kernel_magics.tracking",
        "TrainResult",
        display.train_result_text,
        display.train_result_html,
    ),
    (
        "kernel_magics.registration",
        "RegisterResult",
        display.register_result_text,
        display.register_result_html,
    ),
    (
        "kernel_magics.catalog",
        "ModelSummary",
        lambda summary: display.models_text([summary]),
        lambda summary: display.models_html([summary]),
    ),
]


def _show_transition(result: TransitionResult) -> None:
    """A canary start or drop changes no live version: the line alone, no LIVE badge."""
    canary = result.action in ("canary", "canary-drop")
    html_view = None if canary else display.transition_html(result)
    display.show(display.transition_line(result), html_view)
