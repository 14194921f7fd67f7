"""Progress reporters: text lines, the widget's values, mode selection (the core's registry the
front end fills), the SVG loss curve."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from kernel_magics.display.svg import line_chart
from kernel_magics.errors import InvalidInput
from kernel_magics.training import progress as P
from kernel_magics.training.config import TrainConfig
from kernel_magics.training.data import prepare_data
from kernel_magics.training.fit import EpochResult, fit
from kernel_magics.widgets import progress as W


def epoch(n: int, of: int = 10, **kw) -> EpochResult:
    values = {
        "epoch": n,
        "epochs": of,
        "train_loss": 1.0 / n,
        "val_loss": 1.1 / n,
        "metrics": {
            "accuracy": 0.9,
            "precision_macro": 0.8,
            "recall_macro": 0.85,
            "f1_macro": 0.88,
        },
        "seconds": 0.4,
    }
    return EpochResult(**{**values, **kw})


@pytest.fixture
def widget_registered():
    """The notebook front end's widget registered, as ``%load_ext kernel_magics`` does."""
    W.register()
    yield
    W.unregister()


@pytest.fixture(scope="module")
def small_digits(digits_xy):
    X, y = digits_xy
    return prepare_data(X[:400] / 16.0, y[:400])


# -- text -------------------------------------------------------------------------------------
def test_epoch_line_format():
    result = epoch(
        3, train_loss=0.4121, val_loss=0.398, metrics={"accuracy": 0.912, "f1_macro": 0.91}
    )
    assert P.epoch_line(result) == (
        "epoch  3/10  train_loss 0.412  val_loss 0.398  accuracy 0.912  f1_macro 0.910  (0.4 s)"
    )
    regression = epoch(
        1, 1, train_loss=2.5e4, val_loss=3e4, metrics={"mse": 3e4, "mae": 140.2, "r2": 0.1}
    )
    assert P.epoch_line(regression) == (
        "epoch 1/1  train_loss 25000.0  val_loss 30000.0  mse 30000.0  mae 140.200  r2 0.100"
        "  (0.4 s)"
    )
    assert "no validation set" in P.epoch_line(epoch(1, metrics_on="train"))


def test_text_progress_prints_one_line_per_epoch(small_digits, make_mlp, capsys):
    fit(make_mlp(), small_digits, TrainConfig(epochs=3), progress=P.make_progress("text"))
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert len(lines) == 4
    for i, line in enumerate(lines[:3], start=1):
        assert line.startswith(f"epoch {i}/3  train_loss ")
        assert "accuracy" in line
    assert lines[3].startswith("Sequential done: trained 3 epochs in ")


def test_text_progress_reports_an_interrupt(small_digits, make_mlp, capsys):
    from kernel_magics.errors import TrainingInterrupted

    def stop(result):
        if result.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        fit(
            make_mlp(),
            small_digits,
            TrainConfig(epochs=5),
            on_epoch=stop,
            progress=P.TextProgress(),
        )
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[-1] == "Sequential interrupted: training interrupted at epoch 2/5"


# -- modes ------------------------------------------------------------------------------------
def test_explicit_modes(monkeypatch, widget_registered):
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    assert isinstance(P.make_progress("none"), P.NullProgress)
    assert isinstance(P.make_progress("text"), P.TextProgress)
    assert isinstance(P.make_progress("widget"), W.WidgetProgress)
    for reporter in (P.NullProgress(), P.TextProgress(), W.WidgetProgress()):
        assert isinstance(reporter, P.Progress)
    with pytest.raises(InvalidInput, match="progress must be one of auto, widget, text, none"):
        P.make_progress("fancy")


class ZMQInteractiveShell:  # only the class name matters to the detection
    pass


@pytest.mark.parametrize(
    ("env", "kind", "expected"),
    [
        (None, None, P.TextProgress),  # plain Python / pytest
        (None, "terminal", P.TextProgress),  # IPython in a terminal
        (None, "zmq", W.WidgetProgress),  # a Jupyter kernel
        ("text", "zmq", P.TextProgress),  # papermill / CI force text
        ("NONE", "zmq", P.NullProgress),
        ("widget", None, P.TextProgress),  # no kernel, no frontend: a widget would not render
    ],
)
def test_auto_mode(monkeypatch, env, kind, expected, request, widget_registered):
    import IPython

    if env is None:
        monkeypatch.delenv(P.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(P.ENV_VAR, env)
    current = {
        None: None,
        "terminal": request.getfixturevalue("shell") if kind == "terminal" else None,
        "zmq": ZMQInteractiveShell(),
    }[kind]
    if kind == "terminal":
        assert type(current).__name__ == "InteractiveShell"
    monkeypatch.setattr(IPython, "get_ipython", lambda: current)
    assert type(P.make_progress("auto")) is expected


def test_without_a_front_end_auto_is_text_and_widget_is_refused(monkeypatch):
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    import IPython

    monkeypatch.setattr(IPython, "get_ipython", ZMQInteractiveShell)  # a kernel, no %load_ext
    assert type(P.make_progress("auto")) is P.TextProgress
    with pytest.raises(InvalidInput, match="needs the notebook front end: run %load_ext"):
        P.make_progress("widget")


def test_a_registered_front_end_is_used_and_can_leave(monkeypatch, recorder):
    P.register_progress("widget", lambda: recorder)
    try:
        assert P.make_progress("widget") is recorder
    finally:
        P.unregister_progress("widget")
    with pytest.raises(InvalidInput):
        P.make_progress("widget")


@pytest.mark.process  # a fresh interpreter
def test_importing_training_does_not_import_ipywidgets():
    code = (
        "import sys, kernel_magics.training, kernel_magics.training.fit, "
        "kernel_magics.training.data, kernel_magics.widgets.progress\n"
        "kernel_magics.widgets.progress.register()\n"
        "kernel_magics.training.progress.make_progress('text')\n"
        "print('ipywidgets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.process  # a fresh interpreter
def test_the_core_imports_no_front_end():
    """Every core module imported (tests/test_layers.py reads the imports inside functions)."""
    code = (
        "import importlib, pathlib, sys, kernel_magics\n"
        "front = ('kernel_magics.widgets', 'kernel_magics.display', 'kernel_magics.magics',\n"
        "         'kernel_magics.cli', 'kernel_magics.commands', 'kernel_magics.argtypes',\n"
        "         'kernel_magics.lab')\n"
        "# __main__ starts the inference process; ray_app, ray_gateway are Ray's (tests/ray)\n"
        "skip = front + ('kernel_magics.serving.__main__', 'kernel_magics.serving.ray_')\n"
        "root = pathlib.Path(kernel_magics.__file__).parent\n"
        "names = ['.'.join(('kernel_magics', *p.relative_to(root).with_suffix('').parts))\n"
        "         .removesuffix('.__init__') for p in sorted(root.rglob('*.py'))]\n"
        "core = [name for name in names if not name.startswith(skip)]\n"
        "for name in core:\n"
        "    importlib.import_module(name)\n"
        "assert len(core) > 80, core\n"
        "print(sorted(m for m in sys.modules if m.startswith(front)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- widget -----------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_widget_structure_and_start(shell, capsys):
    import ipywidgets as widgets

    reporter = W.WidgetProgress()
    reporter.start(4, 25, "Net")
    assert isinstance(reporter.box, widgets.VBox)
    assert isinstance(reporter.bar, widgets.IntProgress)
    assert all(isinstance(w, widgets.HTML) for w in (reporter.title, reporter.plot, reporter.table))
    assert (reporter.bar.max, reporter.bar.value) == (100, 0)
    assert "Net" in reporter.title.value
    assert reporter.label.value == "epoch 1/4"
    assert "<svg" in reporter.plot.value
    # display() went through the shell exactly once (a terminal shell prints the repr).
    assert capsys.readouterr().out.count("VBox(") == 1


def test_widget_step_is_throttled(shell):
    clock = Clock()
    reporter = W.WidgetProgress(clock=clock)
    reporter.start(2, 500, "Net")
    for _ in range(500):  # 500 batches within one instant: no redraw at all
        reporter.step(0.5)
    assert reporter.redraws == 0
    assert reporter.bar.value == 0
    assert reporter.done == 500
    for _ in range(500):  # 500 batches over 5 s: at most 10 redraws a second
        clock.now += 0.01
        reporter.step(0.25)
    assert 40 <= reporter.redraws <= 50
    assert reporter.bar.value >= 990
    assert reporter.label.value.startswith("epoch 2/2  running loss 0.250  ETA ")


def test_widget_epoch_end_and_finish(shell):
    clock = Clock()
    reporter = W.WidgetProgress(clock=clock)
    reporter.start(3, 10, "Net")
    for n in (1, 2):
        clock.now += 1
        reporter.epoch_end(epoch(n, 3))
    assert reporter.bar.value == 20
    assert reporter.label.value.startswith("epoch 2/3  train_loss 0.500  val_loss 0.550  ETA 1 s")
    table = ET.fromstring(reporter.table.value)
    rows = table.findall("tr")
    assert [th.text for th in rows[0]] == [
        "epoch",
        "train_loss",
        "val_loss",
        "accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
        "seconds",
    ]
    assert [td.text for td in rows[2]][:4] == ["2/3", "0.500", "0.550", "0.900"]
    svg = ET.fromstring(reporter.plot.value)
    lines = [el for el in svg.iter() if el.tag.endswith("polyline")]
    assert [el.get("data-label") for el in lines] == ["train loss", "val loss"]
    assert all(len(el.get("points").split()) == 2 for el in lines)
    reporter.finish("interrupted", "training interrupted at epoch 2/3")
    assert reporter.bar.bar_style == "warning"
    assert reporter.label.value == "training interrupted at epoch 2/3"
    reporter.finish("done", "trained")
    assert reporter.bar.bar_style == "success"
    assert reporter.bar.value == 30


def test_regression_curves_each_on_a_readable_scale(shell):
    """MSE in millions, MAE in hundreds and R² near 1 on one axis flattened two of them to zero:
    scores share a chart, each error gets its own, and large ticks carry a suffix."""
    reporter = W.WidgetProgress()
    reporter.start(2, 10, "Net")
    for n, mse in ((1, 4.2e6), (2, 2.9e6)):
        metrics = {"mse": mse, "mae": 1500.0 / n, "r2": 0.5 + 0.1 * n}
        reporter.epoch_end(epoch(n, 2, metrics=metrics, train_loss=0.0004 / n))
    charts = ET.fromstring(f"<div>{reporter.metrics_plot.value}</div>")
    labels = [
        [el.get("data-label") for el in svg.iter() if el.tag.endswith("polyline")] for svg in charts
    ]
    assert labels == [["r2"], ["mse"], ["mae"]]
    mse_ticks = [el.text for el in charts[1].iter() if el.tag.endswith("text")]
    assert any(t and t.endswith("M") for t in mse_ticks), mse_ticks
    assert all(len(t) <= 6 for t in mse_ticks if t and t[0].isdigit())
    assert "train_loss 0.0002" in reporter.label.value  # not 0.000


def test_widget_during_a_real_fit(shell, small_digits, make_mlp, capsys, widget_registered):
    reporter = P.make_progress("widget")
    result = fit(make_mlp(), small_digits, TrainConfig(epochs=3), progress=reporter)
    assert reporter.bar.value == reporter.bar.max == 3 * 5  # 320 training rows, batch 64
    assert reporter.bar.bar_style == "success"
    assert reporter.label.value.startswith("trained 3 epochs")
    assert len(ET.fromstring(reporter.table.value).findall("tr")) == 1 + 3
    assert reporter.history == result.history
    out = capsys.readouterr().out
    assert out.count("VBox(") == 1
    # the live box was replaced by a static summary (a terminal shell prints HTML's repr)
    assert out.count("<IPython.core.display.HTML object>") == 1


def test_widget_summary_is_static_html_of_the_run(shell):
    clock = Clock()
    reporter = W.WidgetProgress(clock=clock)
    reporter.start(12, 10, "Net")
    for n in range(1, 13):
        reporter.epoch_end(epoch(n, 12))
    summary = reporter.summary_html("done", "trained 12 epochs")
    doc = ET.fromstring(summary)  # well-formed: it is saved into the notebook as is
    assert "Training Net" in summary
    assert "trained 12 epochs" in summary
    assert "width:100%" in summary
    assert "<svg" in summary
    rows = doc.find(".//table").findall("tr")
    assert len(rows) == 1 + 1 + W.TABLE_ROWS  # header, "earlier epochs", the newest ten
    assert rows[1][0].text.startswith("… 2 earlier epochs")
    assert rows[-1][0].text == "12/12"


# -- svg --------------------------------------------------------------------------------------
def test_line_chart_is_valid_svg_with_axes_and_labels():
    svg = ET.fromstring(
        line_chart([("train loss", [2.0, 1.0, 0.5]), ("val loss", [2.1, 1.2, 0.7])])
    )
    texts = [el.text for el in svg.iter() if el.tag.endswith("text")]
    assert {"train loss", "val loss", "epoch", "loss", "1", "2", "3"} <= set(texts)
    assert "0.5" in texts
    assert "2.5" in texts
    assert len([el for el in svg.iter() if el.tag.endswith("polyline")]) == 2


@pytest.mark.parametrize(
    "series",
    [
        [("train loss", []), ("val loss", [])],  # before the first epoch
        [("train loss", [0.3]), ("val loss", [0.3])],  # one point, flat range
        [("train loss", [1.0, float("nan"), 0.5]), ("val loss", [float("inf"), 1.0, 0.9])],
        [("a <&> b", list(range(40)))],  # many epochs, markup in a label
    ],
)
def test_line_chart_edge_cases(series):
    svg = ET.fromstring(line_chart(series))
    for el in svg.iter():
        for value in el.attrib.values():
            assert "nan" not in value
            assert "inf" not in value
