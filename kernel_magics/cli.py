"""The ``kernel-magics`` console script: the lifecycle operations that need no notebook objects.

    kernel-magics [--home DIR] deploy NAME[@VERSION|@ALIAS] [--max-batch-size N] [--max-wait-ms F]
                                      [--canary PERCENT [--analyze [--metric M ...]
                                       [--window W] [--min-requests N]]] [--log-sample F]
    kernel-magics promote NAME
    kernel-magics rollback NAME [--to VERSION]
    kernel-magics undeploy NAME
    kernel-magics models [--json]
    kernel-magics history NAME [--json]
    kernel-magics predict NAME --input FILE.json|FILE.csv|FILE.npy [--raw] [--json]
    kernel-magics serve start [--workers N] [--host H --allow-remote] | status [--json] | stop
                        | logs [--lines N]
                        | token [--new NAME [--scope predict|manage] | --revoke NAME | --list]
    kernel-magics store serve [--backend-file PATH] [--artifacts DIR] [--host H --port P]
                                      (the database URL: MLFLOW_BACKEND_STORE_URI or the file)
    kernel-magics store doctor
    kernel-magics pipeline run NOTEBOOK [-p NAME VALUE]... [--name RUN_NAME] [--output PATH]
                                        [--allow-extra-params]
    kernel-magics pipeline rerun RUN_ID [-p NAME VALUE]... [--source] [--output PATH]

Exit codes: 0 done; 1 ``serve status`` found no running inference process (with ``--json`` it
prints ``{"running": false}``; when running, ``{"running": true, "url", "pid", "workers",
"status", "models"}``); 2 any error, reported as one line on stderr. Like the magics, this only
parses, calls ``kernel_magics.api`` and prints what ``kernel_magics.display`` renders.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kernel_magics import __version__, api, commands, display
from kernel_magics.argtypes import (
    canary_rule,
    duration,
    non_negative_float,
    option_hint,
    positive_int,
    share,
    version,
)
from kernel_magics.config import Settings, load_settings
from kernel_magics.errors import InvalidInput, KernelMagicsError
from kernel_magics.exiting import skip_exit_collection
from kernel_magics.records import TransitionResult

EXIT_OK, EXIT_ERROR = commands.EXIT_OK, 2


# -- input files --------------------------------------------------------------------------------
def read_input(path: Path) -> Any:
    """Rows to predict from .npy, .json (a list of rows or records, or an object with
    "instances" or "inputs", as the HTTP API takes) or .csv (a header row is optional)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            import numpy as np

            return np.load(path, allow_pickle=False)
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                if "instances" not in data and "inputs" not in data:
                    raise InvalidInput(f'{path}: expected a list or "instances"/"inputs"')
                data = data.get("instances", data.get("inputs"))
            if isinstance(data, list) and data and isinstance(data[0], dict):
                import pandas as pd

                data = pd.DataFrame.from_records(data)
            return data
        if suffix == ".csv":
            import pandas as pd

            frame = pd.read_csv(path, header=None)
            # A first row that is not numeric is a header.
            if pd.to_numeric(frame.iloc[0], errors="coerce").isna().any():
                frame = pd.read_csv(path)
            return frame
    except (OSError, ValueError) as err:
        raise InvalidInput(f"cannot read {path}: {display.one_line(err)}") from None
    raise InvalidInput(f"{path}: unsupported input type {suffix or '(none)'} (.json, .csv, .npy)")


# -- commands -----------------------------------------------------------------------------------
def _print_transition(result: TransitionResult, args: argparse.Namespace) -> int:
    print(display.to_json(result) if args.json else display.transition_line(result))
    return EXIT_OK


def _deploy(args: argparse.Namespace, settings: Settings) -> int:
    result = api.deploy(
        args.target,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        canary=args.canary,
        analyze=canary_rule(args),
        log_sample=args.log_sample,
        settings=settings,
    )
    return _print_transition(result, args)


def _promote(args: argparse.Namespace, settings: Settings) -> int:
    return _print_transition(api.promote(args.name, settings=settings), args)


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    return _print_transition(api.rollback(args.name, to=args.to, settings=settings), args)


def _undeploy(args: argparse.Namespace, settings: Settings) -> int:
    return _print_transition(api.undeploy(args.name, settings=settings), args)


def _models(args: argparse.Namespace, settings: Settings) -> int:
    summaries = api.models(settings=settings)
    print(display.to_json(summaries) if args.json else display.models_text(summaries))
    return EXIT_OK


def _history(args: argparse.Namespace, settings: Settings) -> int:
    events = api.history(args.name, settings=settings)
    print(display.to_json(events) if args.json else display.history_text(args.name, events))
    return EXIT_OK


def _predict(args: argparse.Namespace, settings: Settings) -> int:
    result = api.predict(args.name, read_input(args.input), raw=args.raw, settings=settings)
    if args.json:
        print(display.to_json({"predictions": result}))
    else:
        print(display.predictions_text(result))
    return EXIT_OK


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    rendered = commands.run_serve(args, settings)
    if args.json and rendered.document is not None:
        print(display.to_json(rendered.document))
    else:
        print(rendered.text)
        if args.action == "status" and rendered.exit_code == EXIT_OK:
            print(next_steps(settings))
    return rendered.exit_code


def next_steps(settings: Settings) -> str:
    """What a terminal user does next with a running process (``make demo`` ends with it): where
    the store is, how to browse it in the MLflow UI, how to stop the process."""
    if settings.tracking_uri:
        store, ui = settings.tracking_uri, f"open {settings.tracking_uri} (the tracking server)"
    else:
        mlflow = Path(sys.executable).with_name("mlflow")
        command = str(mlflow) if mlflow.exists() else "mlflow"
        store = f"{settings.home}  (mlflow.db + artifacts/)"
        ui = f"{command} ui --backend-store-uri {settings.store_uri} --port 5000"
    return "\n".join(
        [
            f"store             : {store}",
            f"MLflow UI         : {ui}",
            "stop the process  : kernel-magics serve stop",
        ]
    )


def _pipeline(args: argparse.Namespace, settings: Settings) -> int:
    """``pipeline run NOTEBOOK`` / ``pipeline rerun RUN_ID``: a failed notebook is an error
    (exit 2, the failing cell's error on one line); the progress bar goes to stdout."""
    from kernel_magics.display import evaluation as display_eval
    from kernel_magics.pipelines.execute import progress_mode, skip_unused_imports
    from kernel_magics.pipelines.run import parse_value

    skip_unused_imports()  # this process is ours: papermill loads ~1 s faster
    parameters = {name: parse_value(value) for name, value in args.parameter}
    progress = progress_mode(args.progress or ("none" if args.json else "auto"))
    if args.action == "run":
        record = api.pipeline_run(
            args.target,
            parameters,
            run_name=args.name,
            output=args.output,
            progress=progress,
            allow_extra_params=args.allow_extra_params,
            settings=settings,
        )
        print(display.to_json(record) if args.json else display_eval.pipeline_text(record))
    else:
        result = api.pipeline_rerun(
            args.target,
            parameters=parameters,
            use_source=args.source,
            output=args.output,
            progress=progress,
            settings=settings,
        )
        print(display.to_json(result) if args.json else display_eval.rerun_text(result))
    return EXIT_OK


# -- store serve (kernel_magics.store_server) ---------------------------------------------------
def _store(args: argparse.Namespace, settings: Settings) -> int:
    """``store serve``: a lean MLflow tracking server (PostgreSQL backend) for a team;
    ``store doctor``: mark runs left RUNNING by killed processes KILLED, saying which."""
    if args.action == "doctor":
        fixed = api.store_doctor(settings=settings)
        for orphan in fixed:
            print(orphan.line())
        print(f"{len(fixed)} run(s) fixed" if fixed else "nothing to fix")
        return EXIT_OK
    from kernel_magics import store_server

    options = store_server.ServerOptions(
        backend=store_server.backend_url(args.backend, args.backend_file),
        artifacts=Path(args.artifacts),
        host=args.host,
        port=args.port,
        workers=args.workers,
        allow_remote=args.allow_remote,
    )
    return store_server.serve(options)


# -- parser -------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr and exit code 2, like every other error; an
    unknown option close to a known one says which (``--alow-extra-params``)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("unrecognized arguments:"):
            message += option_hint(self, message.split(":", 1)[1].split())
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kernel-magics",
        description="Deploy, roll back, serve and query models trained with kernel-magics.",
    )
    parser.add_argument("--home", help="home folder of the store and the inference process")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable, help_text: str, *, json_flag: bool = True) -> Any:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        if json_flag:
            p.add_argument("--json", action="store_true", help="print JSON")
        return p

    p = command("deploy", _deploy, "make a version live (newest unless @VERSION or @ALIAS)")
    p.add_argument("target", metavar="NAME[@VERSION|@ALIAS]")
    p.add_argument("--max-batch-size", type=positive_int)
    p.add_argument("--max-wait-ms", type=non_negative_float)
    p.add_argument("--canary", type=positive_int, metavar="PERCENT", help="canary share (1-99)")
    p.add_argument(
        "--analyze", action="store_true", help="promote or roll back the canary by itself"
    )
    p.add_argument("--metric", action="extend", nargs="+", metavar="METRIC")
    p.add_argument("--window", type=duration, help="compare over the last W (60s, 5m)")
    p.add_argument("--min-requests", type=positive_int, metavar="N", help="answers per arm")
    p.add_argument("--log-sample", type=share, metavar="F", help="share of requests logged (0-1)")
    p = command("promote", _promote, "make the running canary of a model live")
    p.add_argument("name", metavar="NAME")
    p = command("rollback", _rollback, "make the previously live version (or --to) live again")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--to", type=version, metavar="VERSION")
    p = command("undeploy", _undeploy, "stop serving a model")
    p.add_argument("name", metavar="NAME")
    command("models", _models, "registered models, versions, metrics, what is live")
    p = command("history", _history, "deployment history of a model, oldest first")
    p.add_argument("name", metavar="NAME")
    p = command("predict", _predict, "predict with the live version of a model")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--input", type=Path, required=True, metavar="FILE", help=".json, .csv or .npy")
    p.add_argument("--raw", action="store_true", help="model outputs instead of class labels")
    p = command("serve", _serve, "the inference process", json_flag=False)
    for flags, options in commands.SERVE_ARGUMENTS:
        p.add_argument(*flags, **options)
    # store serve (kernel_magics.store_server)
    p = command("store", _store, "the shared model store (an MLflow server)", json_flag=False)
    store_actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    text = (
        "run a lean MLflow tracking server (one worker, no job runner) on a database, proxying "
        "artifacts; kernels then set MLFLOW_TRACKING_URI=http://HOST:PORT"
    )
    s = store_actions.add_parser("serve", help=text, description=text)
    s.add_argument(
        "--backend",
        metavar="URL",
        help="postgresql://USER@HOST:PORT/DB without a password (a command line is public); "
        "else MLFLOW_BACKEND_STORE_URI or --backend-file",
    )
    s.add_argument(
        "--backend-file",
        metavar="PATH",
        help="a file (mode 0600) holding the database URL with its password",
    )
    s.add_argument(
        "--artifacts",
        default=str(Path("~/.kernel-magics/server-artifacts").expanduser()),
        metavar="DIR",
        help="where the server keeps artifacts (default: %(default)s)",
    )
    s.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    s.add_argument("--port", type=int, default=5000, help="default: %(default)s")
    s.add_argument("--workers", type=positive_int, default=1, help="default: %(default)s")
    s.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a host other than loopback (the server has no authentication)",
    )
    text = "mark runs left RUNNING by a killed process KILLED, and print them"
    store_actions.add_parser("doctor", help=text, description=text)
    p = command("pipeline", _pipeline, "run a notebook as a recorded pipeline, or rerun one")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, target, text in (
        ("run", "NOTEBOOK", "execute a notebook with papermill as one recorded MLflow run"),
        ("rerun", "RUN_ID", "execute a recorded run again and compare its metrics"),
    ):
        a = actions.add_parser(action, help=text, description=text)
        a.add_argument("target", metavar=target)
        a.add_argument(
            "-p",
            "--parameter",
            nargs=2,
            action="append",
            default=[],
            metavar=("NAME", "VALUE"),
            help="a notebook parameter (repeatable)",
        )
        a.add_argument("--output", metavar="PATH", help="also write the executed notebook here")
        a.add_argument("--progress", choices=("auto", "bar", "text", "none"))
        a.add_argument("--json", action="store_true", help="print JSON")
        if action == "run":
            a.add_argument("--name", help="the run's name (default: the notebook's)")
            a.add_argument(
                "--allow-extra-params",
                action="store_true",
                help="pass -p names the notebook's parameters cell does not set",
            )
        else:
            a.add_argument(
                "--source",
                action="store_true",
                help="execute the file at the recorded path, not the stored copy",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # MLflow logs INFO lines to stderr (e.g. when it creates a store's tables); stderr is for
    # our one-line errors. A level the user chose is kept.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, load_settings(home=args.home))
    except KernelMagicsError as err:
        print(f"kernel-magics: error: {display.one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    finally:
        if argv is None:  # the `kernel-magics` program itself, not a call from Python code
            skip_exit_collection()


if __name__ == "__main__":
    sys.exit(main())
