"""IPython magics: ``%train``, ``%deploy``, ``%rollback``, ``%undeploy``, ``%predict``, ``%models``,
``%history`` and ``%serve``.

This module only parses arguments, evaluates the user's expressions, calls ``kernel_magics.api``
and hands what came back to ``kernel_magics.display``. Every mistake a user can make surfaces as
IPython's ``UsageError`` with one line (IPython shows that class, and only that exact class,
without a traceback). Settings are traitlets, so ``%config KernelMagics.home = "/tmp/x"`` works;
a trait left at its default yields to ``KERNEL_MAGICS_*`` and the built-in defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, CaselessStrEnum, Float, Int, Unicode
from traitlets.config.configurable import Configurable

from kernel_magics import api, display
from kernel_magics.argtypes import non_negative_float, number, positive_int, version
from kernel_magics.config import Settings, load_settings
from kernel_magics.errors import KernelMagicsError
from kernel_magics.tracking import TrainResult

_DEFAULTS = Settings()
_POSITIVE_FLOAT = number(float, 0, inclusive=False)
_OPENING, _CLOSING, _QUOTES = "([{", ")]}", "'\""


# -- argument handling --------------------------------------------------------------------------
@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """The one place where core errors become IPython's one-line, traceback-free UsageError."""
    try:
        yield
    except KernelMagicsError as err:
        raise UsageError(display.one_line(err)) from None


def split_args(line: str) -> list[str]:
    """Split a magic's line at spaces outside brackets and quotes.

    ``Net(hidden = 128)`` and ``X[y == 3]`` stay one argument each. Quotes are kept: they belong
    to the Python expression (``"label"`` evaluates to a column name).
    """
    tokens: list[str] = []
    current, depth, quote, escaped = "", 0, "", False
    for ch in line:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in _QUOTES:
            quote = ch
        elif ch in _OPENING:
            depth += 1
        elif ch in _CLOSING:
            depth -= 1
            if depth < 0:
                raise UsageError(f"unbalanced {ch!r} in: {line.strip()}")
        elif ch.isspace() and depth == 0:
            if current:
                tokens.append(current)
            current = ""
            continue
        current += ch
    if quote or depth:
        raise UsageError(f"unclosed {'quote' if quote else 'bracket'} in: {line.strip()}")
    if current:
        tokens.append(current)
    return tokens


def _word(text: str) -> str:
    """A plain string option (name, column): one pair of surrounding quotes is optional."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
        return text[1:-1]
    return text


def _front_end(func: Callable[[Any, argparse.Namespace], Any]) -> Callable[..., Any]:
    """Parse the line with the magic's argparse parser, then run ``func`` under
    ``usage_errors``. ``magic_arguments`` turns the cleaned docstring into the ``%magic?`` help."""

    @functools.wraps(func)
    def magic(self: KernelMagics, line: str = "") -> Any:
        try:
            args = magic.parser.parse_args(split_args(line))  # type: ignore[attr-defined]
        except UsageError as err:
            raise UsageError(f"{err} (see %{func.__name__}?)") from None
        with usage_errors():
            return func(self, args)

    magic.__doc__ = inspect.cleandoc(func.__doc__ or "")
    return magic


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
        try:
            return self.shell.ev(expr)
        except (NameError, SyntaxError, AttributeError) as err:
            raise UsageError(f"cannot evaluate {what} `{expr}`: {display.one_line(err)}") from None

    # -- training -------------------------------------------------------------------------------
    # Ranges are checked while parsing where a bad value would otherwise only fail after an
    # MLflow run was opened; val-split's bounds are the training code's to decide.
    @line_magic
    @magic_arguments()
    @argument("model", metavar="MODEL_EXPR", help="an nn.Module expression: Net(), model")
    @argument("--data", nargs="+", required=True, metavar="EXPR", help="X_EXPR [Y_EXPR]")
    @argument("--target", type=_word, help="target column of a DataFrame X (instead of Y_EXPR)")
    @argument("--name", type=_word, help="model name (default: class name, lowercased)")
    @argument("--epochs", type=positive_int, default=5, help="default: %(default)s")
    @argument("--lr", type=_POSITIVE_FLOAT, default=1e-3, help="learning rate, default %(default)s")
    @argument("--batch-size", type=positive_int, default=64, help="default: %(default)s")
    @argument("--optimizer", type=_word, default="adam", help="default: %(default)s")
    @argument("--weight-decay", type=non_negative_float, default=0.0, help="default: %(default)s")
    @argument("--val-split", type=float, default=0.2, help="held out, default %(default)s")
    @argument("--seed", type=int, default=0, help="default: %(default)s")
    @argument("--task", choices=("classification", "regression"), help="default: inferred")
    @_front_end
    def train(self, args: argparse.Namespace) -> TrainResult:
        """Train a PyTorch model on arrays, tensors or a DataFrame and register a new version.

        MODEL_EXPR and the data expressions are evaluated in the notebook's namespace. The run
        (parameters, per-epoch metrics, the model) is logged to MLflow and the model becomes the
        next version of NAME; the result carries the version, run id, final metrics and the
        trained model. Interrupt the kernel to stop: the run is recorded as killed and nothing is
        registered.

        Examples::

            r = %train Net() --data X y --epochs 5 --lr 1e-3 --name digits
            %train model --data df --target price --task regression
            %train Net(hidden=128) --data X_train y_train --epochs {epochs} --name {name}
        """
        if len(args.data) > 2:
            raise UsageError(
                f"--data takes X_EXPR and optionally Y_EXPR, got {len(args.data)} expressions"
            )
        if len(args.data) == 2 and args.target:
            raise UsageError("give the target either as Y_EXPR or as --target, not both")
        model = self._eval(args.model, "the model")
        X = self._eval(args.data[0], "the features")
        y = self._eval(args.data[1], "the targets") if len(args.data) == 2 else args.target
        return api.train(
            model,
            X,
            y,
            name=args.name or type(model).__name__.lower(),
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            weight_decay=args.weight_decay,
            val_split=args.val_split,
            seed=args.seed,
            task=args.task,
            progress=self.progress,
            settings=self.settings(),
        )

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
    @_front_end
    def deploy(self, args: argparse.Namespace) -> None:
        """Make a version live in the background inference process (started if needed).

        The version is loaded and warmed before it takes traffic; requests never fail during the
        swap, and if it cannot be loaded the live version keeps serving.

        Examples::

            %deploy digits
            %deploy digits@2
            %deploy digits@challenger --max-batch-size 128
        """
        result = api.deploy(
            args.target,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            settings=self.settings(),
        )
        display.show(display.transition_line(result))

    @line_magic
    @magic_arguments()
    @argument("name", type=_word, metavar="NAME", help="model to roll back")
    @argument(
        "--to",
        type=version,
        metavar="VERSION",
        help="version to make live (default: the one live before)",
    )
    @_front_end
    def rollback(self, args: argparse.Namespace) -> None:
        """Make the previously live version (or --to VERSION) live again, with the same hot swap.

        Examples::

            %rollback digits
            %rollback digits --to 1
        """
        result = api.rollback(args.name, to=args.to, settings=self.settings())
        display.show(display.transition_line(result))

    @line_magic
    @magic_arguments()
    @argument("name", type=_word, metavar="NAME", help="model to stop serving")
    @_front_end
    def undeploy(self, args: argparse.Namespace) -> None:
        """Stop serving a model and clear its live alias; the versions stay registered.

        Example::

            %undeploy digits
        """
        result = api.undeploy(args.name, settings=self.settings())
        display.show(display.transition_line(result))

    # -- inference ------------------------------------------------------------------------------
    @line_magic
    @magic_arguments()
    @argument("name", type=_word, metavar="NAME", help="a deployed model")
    @argument(
        "expr",
        nargs="+",
        metavar="EXPR",
        help="rows to predict: an array, tensor or DataFrame expression",
    )
    @argument("--raw", action="store_true", help="the model's outputs instead of class labels")
    @_front_end
    def predict(self, args: argparse.Namespace) -> Any:
        """Predict with the live version of a model through its HTTP endpoint.

        Returns a numpy array: class labels for classifiers, outputs with --raw or for regressors.

        Examples::

            labels = %predict digits X[:3]
            scores = %predict digits X_test --raw
        """
        X = self._eval(" ".join(args.expr), "the input")
        return api.predict(args.name, X, raw=args.raw, settings=self.settings())

    # -- what exists ----------------------------------------------------------------------------
    @line_magic
    @magic_arguments()
    @argument("--json", action="store_true", help="print JSON instead of a table")
    @_front_end
    def models(self, args: argparse.Namespace) -> None:
        """Every registered model and version with its key metrics; which version is live (the
        production alias) and which one the inference process serves.

        Example::

            %models
        """
        summaries = api.models(settings=self.settings())
        if args.json:
            display.show(display.to_json(summaries))
        else:
            display.show(display.models_text(summaries), display.models_html(summaries))

    @line_magic
    @magic_arguments()
    @argument("name", type=_word, metavar="NAME", help="a registered model")
    @argument("--json", action="store_true", help="print JSON instead of a table")
    @_front_end
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
    @argument("action", choices=("status", "start", "stop", "logs", "token"), help="what to do")
    @argument("--workers", type=positive_int, help="start: number of worker processes")
    @argument("--lines", type=positive_int, default=50, help="logs: how many lines (default 50)")
    @argument("--json", action="store_true", help="status: print JSON")
    @_front_end
    def serve(self, args: argparse.Namespace) -> None:
        """The background inference process: its status (with requests and rows per token),
        start, stop, recent log lines, and the bearer token for plain HTTP clients (curl,
        scripts). Named tokens for other callers: ``kernel-magics serve token --new NAME``.

        Examples::

            %serve status
            %serve start --workers 2
            %serve logs --lines 20
            %serve token
        """
        settings = self.settings()
        if args.action == "status":
            status = api.server_status(settings=settings)
            if args.json:
                display.show(display.to_json(status or {"running": False}))
            else:
                display.show(display.status_text(status), display.status_html(status))
        elif args.action == "start":
            status = api.server_start(workers=args.workers, settings=settings)
            display.show(display.status_text(status), display.status_html(status))
        elif args.action == "stop":
            display.show(display.stopped_line(api.server_stop(settings=settings)))
        elif args.action == "logs":
            display.show(api.server_logs(args.lines, settings=settings))
        else:
            display.show(api.server_token(settings=settings))


# -- extension hooks ----------------------------------------------------------------------------
def _pretty_train_result(result: TrainResult, printer: Any, cycle: bool) -> None:
    printer.text(display.train_result_text(result))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext kernel_magics``: register the magics and their %config traits."""
    from kernel_magics.warmup import start_server, start_warmup

    magics = KernelMagics(shell=ipython)  # Magics.__init__ adds it to ipython.configurables
    if magics not in ipython.configurables:
        ipython.configurables.append(magics)
    ipython.register_magics(magics)
    # Terminals and papermill's text output get a short summary instead of the dataclass repr.
    ipython.display_formatter.formatters["text/plain"].for_type(TrainResult, _pretty_train_result)
    settings = magics.settings()
    start_warmup(settings)
    if settings.autostart:
        start_server(settings)


def unload_ipython_extension(ipython: Any) -> None:
    from kernel_magics.warmup import stop_watchdog

    stop_watchdog()
    ipython.configurables[:] = [c for c in ipython.configurables if not isinstance(c, KernelMagics)]
    for kind, names in KernelMagics.magics.items():
        for name in names:
            ipython.magics_manager.magics[kind].pop(name, None)
    ipython.magics_manager.registry.pop(KernelMagics.__name__, None)
    ipython.display_formatter.formatters["text/plain"].pop(TrainResult, None)
