"""The lifecycle magics: ``%deploy``, ``%rollback``, ``%undeploy``,
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
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from traitlets import Bool, CaselessStrEnum, Float, Int, Unicode
from traitlets.config.configurable import Configurable

from kernel_magics import api, commands, display
from kernel_magics.argtypes import (
    canary_rule,
    duration,
    non_negative_float,
    positive_int,
    share,
    version,
)
from kernel_magics.config import GEN_DTYPES, Settings, load_settings
from kernel_magics.errors import NotFound
from kernel_magics.magics._args import View, arguments, front_end, word
from kernel_magics.magics._results import predictions_view
from kernel_magics.records import TransitionResult
from kernel_magics.widgets.front_end import widgets_render

_DEFAULTS = Settings()


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
    metrics_requires_token = _setting(Bool, "metrics_requires_token", "/metrics needs a token")
    max_body_bytes = _setting(Int, "max_body_bytes", "largest request body accepted")
    max_rows = _setting(Int, "max_rows", "most rows one prediction request may carry")
    request_timeout_s = _setting(Float, "request_timeout_s", "seconds before a request gives up")
    header_timeout_s = _setting(Float, "header_timeout_s", "seconds a client has to send a head")
    idle_timeout_s = _setting(Float, "idle_timeout_s", "seconds an idle connection stays open")
    max_connections = _setting(Int, "max_connections", "open connections per worker (then 503)")
    gen_max_running = _setting(Int, "gen_max_running", "sequences a language model decodes at once")
    gen_kv_cache_tokens = _setting(
        Int, "gen_kv_cache_tokens", "KV-cache budget of a language model, in tokens"
    )
    gen_max_queued = _setting(Int, "gen_max_queued", "requests waiting for a slot before 429")
    gen_dtype = CaselessStrEnum(
        list(GEN_DTYPES),
        default_value="auto",
        help="Precision language models are served in: auto (the checkpoint's), bfloat16, float32.",
    ).tag(config=True)
    gen_threads = _setting(
        Int, "gen_threads", "torch threads of a language model's engine (0: by model size)"
    )
    gen_blocked_weights = _setting(
        Bool, "gen_blocked_weights", "large float32 language models: a blocked weight copy"
    )
    gen_prefix_cache_tokens = _setting(
        Int, "gen_prefix_cache_tokens", "prompt tokens a language model keeps for reuse (0: off)"
    )
    canary_window_s = _setting(Float, "canary_window_s", "seconds a judged canary is compared over")
    canary_min_requests = _setting(
        Int, "canary_min_requests", "requests each arm needs before a canary is judged"
    )
    canary_error_rate_margin = _setting(
        Float, "canary_error_rate_margin", "error rate a canary may add before it is rolled back"
    )
    canary_p99_ratio = _setting(Float, "canary_p99_ratio", "canary p99 / live p99 that fails it")
    canary_p99_slack_ms = _setting(
        Float, "canary_p99_slack_ms", "p99 difference (ms) below which a canary never fails"
    )
    canary_accuracy_margin = _setting(
        Float, "canary_accuracy_margin", "live accuracy a canary may lose before it is rolled back"
    )
    canary_drift_ratio = _setting(
        Float, "canary_drift_ratio", "canary prediction PSI / live PSI that fails it"
    )
    canary_drift_margin = _setting(
        Float, "canary_drift_margin", "prediction PSI a canary may add before it is rolled back"
    )
    canary_judge_interval_s = _setting(
        Float, "canary_judge_interval_s", "seconds between two looks at a judged canary"
    )
    log_sample = _setting(Float, "log_sample", "share of requests the inference log keeps (0-1)")
    log_max_rows = _setting(Int, "log_max_rows", "inference log rows kept per model")
    log_queue = _setting(Int, "log_queue", "samples waiting for the log writer (then dropped)")
    drift_p_value = _setting(Float, "drift_p_value", "%drift flags below this test p-value …")
    drift_psi = _setting(Float, "drift_psi", "… when the PSI is at least this (0.1)")
    drift_interval_s = _setting(Float, "drift_interval_s", "seconds between drift gauges (0 off)")
    drift_window_rows = _setting(Int, "drift_window_rows", "newest logged rows the gauges use")
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
        assert self.shell is not None  # magics run inside a shell
        try:
            return self.shell.ev(expr)
        except (NameError, SyntaxError, AttributeError) as err:
            raise UsageError(f"cannot evaluate {what} `{expr}`: {display.one_line(err)}") from None

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
    @argument(
        "--analyze",
        action="store_true",
        help="the inference process promotes or rolls back the canary by itself",
    )
    @argument(
        "--metric",
        action="extend",
        nargs="+",
        metavar="METRIC",
        help="what --analyze compares: error_rate p99 accuracy drift (default: error_rate p99)",
    )
    @argument("--window", type=duration, help="--analyze compares the last W (60s, 5m)")
    @argument(
        "--min-requests", type=positive_int, metavar="N", help="--analyze waits for N per arm"
    )
    @argument(
        "--log-sample",
        type=share,
        metavar="F",
        help="share of requests the inference log keeps (0-1; default: the log_sample setting)",
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
            %deploy digits@3 --canary 10 --analyze --metric p99 --min-requests 500
                                             # promoted or rolled back by the process itself
            %deploy digits --log-sample 0.1  # the inference log keeps every 10th request
        """
        result = api.deploy(
            args.target,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            canary=args.canary,
            analyze=canary_rule(args),
            log_sample=args.log_sample,
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
    @argument("name", nargs="?", type=word, metavar="NAME", help="open on (or list) this model")
    @argument("--json", action="store_true", help="print JSON instead of a table")
    @argument("--static", action="store_true", help="the table, even where widgets render")
    @front_end
    def models(self, args: argparse.Namespace) -> None:
        """Every registered model and version with its key metrics and which version is live
        (the production alias, which the inference process serves; a note says when it serves
        something else).

        In JupyterLab or Notebook: a registry browser (versions with metrics, params, size,
        lineage and tags; two versions side by side with their training curves; Deploy,
        Rollback and Undeploy buttons), open on NAME or else on the most recently changed
        model. Under papermill, nbconvert or a terminal, and with --static: the table (of NAME
        only when given).

        Examples::

            %models
            %models digits
            %models --static
            %models --json
        """
        settings = self.settings()
        if not args.json and not args.static and widgets_render():
            from kernel_magics.widgets.registry import RegistryBrowser

            RegistryBrowser(settings, args.name).show()
            return
        summaries = api.models(settings=settings)
        if args.name:
            known = [s.name for s in summaries]
            if args.name not in known:
                raise NotFound(api.not_found(args.name, known))
            summaries = [s for s in summaries if s.name == args.name]
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
            %serve token --new release-bot --scope manage
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
