"""The magics in a real InteractiveShell, against a real store; no inference process needed.

Arguments, help, %config traits, error conversion, training through %train, and the renderings
of kernel_magics.display. The deploy/serve path is covered by test_lifecycle_e2e.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError

from kernel_magics import api, display
from kernel_magics.config import Settings
from kernel_magics.display import status as display_status
from kernel_magics.errors import DeployFailed
from kernel_magics.magics import KernelMagics, split_args
from kernel_magics.magics._results import TrainingStopped
from kernel_magics.records import HistoryEvent, ModelState, ServerStatus, TransitionResult
from kernel_magics.tracking import TrainResult

MAGICS = ("train", "deploy", "rollback", "undeploy", "predict", "models", "history", "serve")


@pytest.fixture(scope="module")
def magics(ip: Any) -> KernelMagics:
    (found,) = [c for c in ip.configurables if isinstance(c, KernelMagics)]
    return found


def usage_error(ip: Any, magic: str, line: str) -> str:
    """The message of the UsageError a magic raises: exactly that class, one line."""
    with pytest.raises(UsageError) as caught:
        ip.run_line_magic(magic, line)
    assert type(caught.value) is UsageError  # a subclass would be shown with a traceback
    message = str(caught.value)
    assert message
    assert "\n" not in message
    return message


# -- registration, help, settings ---------------------------------------------------------------
def test_every_magic_has_argparse_help(ip: Any) -> None:
    for name in MAGICS:
        doc = ip.find_line_magic(name).__doc__
        assert f"%{name}" in doc, name  # the usage line argparse generated
        assert "Example" in doc, name
    train_doc = ip.find_line_magic("train").__doc__
    for option in ("--data", "--epochs", "--lr", "--batch-size", "--target", "--name", "--task"):
        assert option in train_doc


def test_config_traits_mirror_settings(ip: Any, magics: KernelMagics, km_home: Path) -> None:
    traits = magics.class_trait_names(config=True)
    assert {f.name for f in dataclasses.fields(Settings)} <= set(traits)
    assert magics.settings().home == km_home.resolve()  # default trait → KERNEL_MAGICS_HOME
    try:
        ip.run_line_magic("config", f'KernelMagics.home = "{km_home / "elsewhere"}"')
        ip.run_line_magic("config", "KernelMagics.port = 8123")
        ip.run_line_magic("config", 'KernelMagics.progress = "text"')
        s = magics.settings()
        assert (s.home, s.port, magics.progress) == (km_home.resolve() / "elsewhere", 8123, "text")
    finally:  # %config also wrote the shell's config, which a reloaded extension would read
        for name in ("home", "port", "progress"):
            ip.config.KernelMagics.pop(name, None)
            setattr(magics, name, magics.trait_defaults(name))
    assert magics.settings().home == km_home.resolve()


def test_default_trait_yields_to_environment(
    magics: KernelMagics, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERNEL_MAGICS_MAX_BATCH_SIZE", "16")
    assert magics.settings().max_batch_size == 16
    magics.max_batch_size = 32
    try:
        assert magics.settings().max_batch_size == 32
    finally:
        magics.max_batch_size = magics.trait_defaults("max_batch_size")


def test_reload_keeps_one_instance(ip: Any) -> None:
    ip.run_line_magic("reload_ext", "kernel_magics")
    assert sum(isinstance(c, KernelMagics) for c in ip.configurables) == 1
    assert ip.find_line_magic("train") is not None


@pytest.mark.parametrize(
    ("line", "tokens"),
    [
        ("Net() --data X y", ["Net()", "--data", "X", "y"]),
        (
            "Net(hidden = 128) --data X[y == 3] y[y == 3]",
            ["Net(hidden = 128)", "--data", "X[y == 3]", "y[y == 3]"],
        ),
        (
            "m --data df 'my label' --name \"a b\"",
            ["m", "--data", "df", "'my label'", "--name", '"a b"'],
        ),
        ("  {'a': [1, 2]}  x ", ["{'a': [1, 2]}", "x"]),
    ],
)
def test_split_args_keeps_expressions_whole(line: str, tokens: list[str]) -> None:
    assert split_args(line) == tokens


# -- mistakes are one-line UsageErrors ----------------------------------------------------------
@pytest.mark.parametrize(
    ("magic", "line", "expected"),
    [
        ("train", "", "required"),
        ("train", "Net()", "--data"),
        ("train", "Net() --data X y --epochs -1", "--epochs"),
        ("train", "Net() --data X y --epochs two", "--epochs"),
        ("train", "Net() --data X y --lr 0", "--lr"),
        ("train", "Net() --data X y --epoch 3", "arguments: --epoch 3; did you mean --epochs?"),
        ("deploy", "digits --canery 10", "did you mean --canary?"),
        ("deploy", "digits --canary 5 --analyze --window soon", "--window"),
        ("deploy", "digits --canary 5 --analyze --window 0s", "more than 0 seconds"),
        ("deploy", "digits --canary 5 --analyze --metric latency", "unknown canary metric"),
        ("deploy", "digits --min-requests 9", "--min-requests belongs to --analyze"),
        ("train", "Net() --data X y --task clustering", "--task"),
        ("train", "Net() --data X y z", "Y_EXPR"),
        ("train", "Net() --data X y --target label", "not both"),
        ("train", "Net( --data X y", "unclosed"),
        ("train", "Nett() --data X y", "Nett"),
        ("train", "Net() --data X undefined_y", "undefined_y"),
        ("train", "Net() --data X y[:10]", "rows"),
        ("train", "Net() --data X y --val-split 1.5", "val_split"),
        ("train", "Net() --data X y --optimizer lbfgs2", "optimizer"),
        ("train", "Net() --data X y --name 'bad name'", "invalid model name"),
        ("predict", "digits undefined_var", "undefined_var"),
        ("predict", "digits X.nope", "nope"),
        ("deploy", "", "required"),
        ("deploy", "digits@", "after '@'"),
        ("deploy", "nope", "no registered model"),
        ("rollback", "digits --to x", "--to"),
        ("serve", "restart", "unknown sub-command"),
        ("serve", "logs --lines 0", "--lines"),
        ("history", "../etc", "invalid model name"),
    ],
)
def test_mistakes_are_one_line_usage_errors(ns: Any, magic: str, line: str, expected: str) -> None:
    assert expected in usage_error(ns, magic, line)


def test_failed_trainings_registered_nothing(ns: Any) -> None:
    assert api.models() == []  # runs after the mistakes above, before any successful %train


def test_core_errors_become_their_first_line(ns: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise DeployFailed("digits v3 could not be loaded: bad weights\n  (details)")

    monkeypatch.setattr(api, "deploy", fail)
    assert usage_error(ns, "deploy", "digits@3") == "digits v3 could not be loaded: bad weights"


def test_usage_error_shows_without_traceback(ns: Any, capsys: pytest.CaptureFixture) -> None:
    result = ns.run_cell("%predict digits undefined_var")
    assert type(result.error_in_exec) is UsageError
    err = capsys.readouterr().err
    assert err.strip() == f"UsageError: {result.error_in_exec}"
    assert "Traceback" not in err


def test_interrupted_training_is_one_line_and_registers_nothing(ns: Any, run_cell: Any) -> None:
    run_cell(
        ns,
        "class Stopper(Net):\n"
        "    calls = 0\n"
        "    def forward(self, x):\n"
        "        type(self).calls += 1\n"
        "        if type(self).calls > 3:\n"
        "            raise KeyboardInterrupt\n"
        "        return super().forward(x)\n",
    )
    # an interrupt is no usage error: one plain line naming the KILLED run, said once
    with pytest.raises(TrainingStopped) as caught:
        ns.run_line_magic("train", "Stopper() --data X y --epochs 2 --name stopped")
    (message,) = caught.value._render_traceback_()
    assert "interrupted" in message
    assert "KILLED" in message
    assert "nothing was registered" in message
    assert "stopped" not in [s.name for s in api.models()]


# -- training through the magic -----------------------------------------------------------------
def test_train_returns_the_result(ns: Any, run_cell: Any, capsys: pytest.CaptureFixture) -> None:
    r = run_cell(ns, "r = %train Net() --data X y --epochs 1 --lr 1e-2 --seed 1\nr")
    assert isinstance(r, TrainResult)
    assert ns.user_ns["r"] is r
    assert (r.name, r.version) == ("net", 1)  # default name: the class name, lowercased
    assert type(r.net).__module__ == "__main__"  # r.model: the registered pipeline around it
    assert {"accuracy", "f1_macro", "val_loss"} <= set(r.metrics)
    text = ns.display_formatter.format(r)[0]["text/plain"]
    assert text.startswith("net v1 registered")
    assert r.run_id in text
    assert r.run_id in r._repr_html_()
    assert "net v1 registered" in capsys.readouterr().out  # the Out[] of the cell


def test_printing_a_training_result_is_one_line(ns: Any) -> None:
    """print(r) of a long training is a summary; every epoch stays in r.history."""
    r = ns.user_ns["r"]
    long = dataclasses.replace(r, history=r.history * 300)
    text = str(long)
    assert "\n" not in text, text
    assert len(text) < 300, text
    assert text.startswith("TrainResult(net v1, run ")
    assert "300 epochs in r.history" in text
    assert f"accuracy={r.metrics['accuracy']:.4g}" in text
    assert len(long.history) == 300
    assert repr(long) == text


def test_train_on_a_dataframe_target_column(ns: Any, digits: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = digits
    frame = pd.DataFrame(X[:200], columns=[f"p{i}" for i in range(64)]).assign(label=y[:200])
    ns.user_ns["df"] = frame
    by_option = ns.run_line_magic("train", "Net() --data df --target label --epochs 1 --name frame")
    by_expr = ns.run_line_magic("train", "Net() --data df 'label' --epochs 1 --name frame")
    assert (by_option.version, by_expr.version) == (1, 2)
    summary = {s.name: s for s in api.models()}["frame"]
    assert [v.task for v in summary.versions] == ["classification", "classification"]


def test_models_and_status_without_a_server(ns: Any, capsys: pytest.CaptureFixture) -> None:
    # `%deploy nope` above started the process while it checked the name: stop waits for it.
    ns.run_line_magic("serve", "stop")
    capsys.readouterr()
    assert ns.run_line_magic("models", "") is None
    out = capsys.readouterr().out
    assert "net" in out
    assert "v1" in out
    assert "LIVE" not in out
    ns.run_line_magic("models", "--json")
    listed = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in listed} >= {"net", "frame"}
    ns.run_line_magic("serve", "status")
    assert capsys.readouterr().out.strip() == display_status.NOT_RUNNING
    ns.run_line_magic("serve", "status --json")
    assert json.loads(capsys.readouterr().out) == {"running": False}
    ns.run_line_magic("history", "net")
    assert "never been deployed" in capsys.readouterr().out


# -- renderings ---------------------------------------------------------------------------------
def _summaries() -> list[api.ModelSummary]:
    def row(version: int, live: bool, accuracy: float) -> api.VersionRow:
        metrics = {"accuracy": accuracy, "f1_macro": accuracy - 0.01, "val_loss": 0.3}
        aliases = ("production",) if live else ()
        return api.VersionRow(
            version, 1.7e9, "run1", "classification", "pt2", metrics, aliases, live
        )

    reg = api.VersionRow(1, 1.7e9, "run2", "regression", "pt2", {"mse": 2.5, "r2": 0.8}, (), False)
    return [
        api.ModelSummary("digits", 1, 1, [row(1, True, 0.9), row(2, False, 0.95)]),
        api.ModelSummary("<prices>", None, None, [reg]),
    ]


def test_models_views() -> None:
    summaries = _summaries()
    summaries[0].versions[0].live = False  # the summary's live_version decides
    text = display.models_text(summaries)
    lines = text.splitlines()
    assert lines[0].split() == list(display.MODEL_HEADERS)
    v1 = next(line for line in lines if line.startswith("digits") and " v1 " in line)
    assert "LIVE" in v1
    assert "accuracy=0.9" in v1
    assert "mse=2.5 r2=0.8" in text
    html_text = display.models_html(summaries)
    assert html_text.count(">LIVE<") == 1
    assert "&lt;prices&gt;" in html_text
    assert display.models_text([]) == display.NO_MODELS
    summaries[0].served_version = None
    assert "v1 is live but the inference process serves nothing" in display.models_text(summaries)


def test_transition_lines() -> None:
    deploy = TransitionResult("digits", "deploy", 2, 1, load_ms=35.2, url="http://127.0.0.1:5000")
    assert display.transition_line(deploy) == (
        "digits v2 is live (was v1) at http://127.0.0.1:5000 — loaded in 35 ms"
    )
    rollback = TransitionResult("digits", "rollback", 1, 2)
    assert display.transition_line(rollback) == "digits v1 is live again (was v2)"
    first = TransitionResult("digits", "deploy", 1, None)
    assert display.transition_line(first) == "digits v1 is live (nothing was live)"
    gone = TransitionResult("digits", "undeploy", None, 1)
    assert display.transition_line(gone) == "digits is no longer served (was v1)"


def test_status_history_and_predictions_views() -> None:
    models = {"digits": ModelState("digits", 3, state="ready"), "prices": ModelState("prices", 1)}
    status = ServerStatus("http://127.0.0.1:5000", 42, "ready", workers=(43, 44), models=models)
    text = display_status.status_text(status)
    assert (
        text.splitlines()[0]
        == "Inference process at http://127.0.0.1:5000 (pid 42, 2 workers, ready)"
    )
    assert "digits" in text
    assert "v3 (ready)" in text
    assert "v1" in text
    assert "<table" in display_status.status_html(status)
    events = [
        HistoryEvent("2026-01-01T10:00:00.1+00:00", "deploy", None, 1),
        HistoryEvent("2026-01-01T10:05:00.1+00:00", "rollback", 2, 1),
    ]
    rows = display.history_text("digits", events).splitlines()[2:]
    assert rows[0].split()[-3:] == ["deploy", "-", "v1"]
    assert rows[1].split()[-3:] == ["rollback", "v2", "v1"]
    assert rows[0].split()[1].endswith(":00:00")  # local time, to the second
    assert display.predictions_text(np.array([1, 2])) == "1\n2"
    assert display.predictions_text(np.array([[0.5, 1.0]])) == "0.5 1.0"
    assert json.loads(display.to_json({"p": np.array([1.5])})) == {"p": [1.5]}


def test_show_sends_a_bundle_in_a_notebook(monkeypatch: pytest.MonkeyPatch) -> None:
    import IPython.display

    shown: list[tuple[Any, dict]] = []
    monkeypatch.setattr(display.messages, "in_notebook", lambda: True)
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append((obj, kw)))
    display.show("text", "<b>html</b>")
    assert shown == [({"text/plain": "text", "text/html": "<b>html</b>"}, {"raw": True})]


def test_one_line() -> None:
    assert display.one_line(ValueError("first\nsecond")) == "first"
    assert display.one_line(KeyError()) == "KeyError"
