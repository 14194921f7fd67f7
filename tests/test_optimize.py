"""kernel-magics optimize: each method makes a version with its lineage and its measured
trade-off; ONNX versions serve through the real inference process (JSON and npy, hot swap with
a pt2 version, rollback, the hash check); what cannot be optimized says so in one line."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
from IPython.core.error import UsageError

from kernel_magics import api
from kernel_magics.api._context import _store  # the store the api writes to
from kernel_magics.config import load_settings
from kernel_magics.display import optimize as display_optimize
from kernel_magics.errors import DeployFailed, IntegrityError, InvalidInput


class MLP(nn.Module):
    def __init__(self, hidden: int = 64, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.Sequential(
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Scale(nn.Module):
    """Nothing to quantize or prune structurally: an element-wise model."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.w


class Branchy(nn.Module):
    """Data-dependent control flow: torch.export cannot trace it (MLflow's pickle format)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.b(h if h.sum() > 0 else -h)


@pytest.fixture(scope="module")
def parent(ns: Any, digits: tuple[np.ndarray, np.ndarray]) -> str:
    X, y = digits
    r = api.train(MLP(), X, y, name="digits", epochs=4, progress="none")
    assert r.version == 1
    return "digits@1"


def tags(version: int, name: str = "digits") -> dict[str, str]:
    return dict(_store(load_settings()).resolve(name, version).tags)


def check_lineage(r: Any, recipe_start: str) -> dict[str, str]:
    t = tags(r.version, r.name)
    assert t["km.parent"] == "digits@1"
    assert t["km.recipe"] == r.recipe
    assert r.recipe.startswith(recipe_start)
    assert t["km.format"] == r.format
    assert t["km.sha256"]
    for key in ("size_bytes", "params", "p50_us_b1", "p50_us_b64", "accuracy", "f1_macro"):
        assert f"km.opt.{key}" in t
        assert f"km.opt.parent.{key}" in t
    metrics = _store(load_settings()).client.get_run(r.run_id).data.metrics
    assert metrics["accuracy"] == pytest.approx(r.figures.metrics["accuracy"])
    assert metrics["parent_size_bytes"] == r.parent_figures.size_bytes
    return t


def test_export_onnx_matches_torch(parent, digits):
    X, y = digits
    r = api.optimize(parent, export="onnx", X=X, y=y)
    assert (r.method, r.format, r.version) == ("export", "onnx", 2)
    check_lineage(r, "export onnx")
    assert r.checks["max_abs_diff_fp32"] <= 1e-4
    assert r.figures.params == r.parent_figures.params
    assert r.figures.metrics["accuracy"] == pytest.approx(r.parent_figures.metrics["accuracy"])
    text = display_optimize.optimize_text(r)
    assert "p50 batch 64" in text
    assert "within the 0.0001 tolerance" in text
    assert "<svg" in display_optimize.optimize_html(r)


def test_quantize_dynamic_is_int8_onnx(parent, digits):
    X, y = digits
    r = api.optimize(parent, quantize="dynamic", X=X, y=y)
    check_lineage(r, "quantize dynamic int8")
    assert r.format == "onnx"
    assert r.figures.size_bytes < 0.45 * r.parent_figures.size_bytes
    drop = r.parent_figures.metrics["accuracy"] - r.figures.metrics["accuracy"]
    assert drop <= 0.03


def test_quantize_static_with_calibration(parent, digits):
    X, y = digits
    r = api.optimize(parent, quantize="static", calibration=X[:300], X=X, y=y)
    check_lineage(r, "quantize static int8 (onnxruntime, 300 calibration rows)")
    drop = r.parent_figures.metrics["accuracy"] - r.figures.metrics["accuracy"]
    assert drop <= 0.05


def test_structured_pruning_shrinks(parent, digits):
    X, y = digits
    r = api.optimize(parent, prune=0.5, structured=True, finetune_epochs=1, X=X, y=y)
    check_lineage(r, "prune 50% structured")
    assert r.format == "pt2"
    assert "64→32, 64→32" in r.recipe
    assert "fine-tuned 1 epoch" in r.recipe
    assert r.figures.params < 0.5 * r.parent_figures.params
    assert r.figures.size_bytes < r.parent_figures.size_bytes
    assert r.figures.metrics["accuracy"] >= r.parent_figures.metrics["accuracy"] - 0.15


def test_unstructured_pruning_zeroes_and_says_it_does_not_shrink(parent, digits):
    X, y = digits
    r = api.optimize(parent, prune=0.5, X=X, y=y)
    check_lineage(r, "prune 50% unstructured")
    assert r.figures.params == r.parent_figures.params
    assert any("does not change" in n or "do not change" in n for n in r.notes)
    folder = _store(load_settings()).local_path(
        _store(load_settings()).resolve("digits", r.version)
    )
    state = torch.export.load(str(Path(folder) / "data" / "model.pt2")).state_dict
    matrices = [t for t in state.values() if t.ndim == 2]
    zeros = sum(int((t == 0).sum()) for t in matrices) / sum(t.numel() for t in matrices)
    assert 0.45 <= zeros <= 0.55


def test_distillation_reports_labels_only_beside_it(parent, digits):
    X, y = digits
    student = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    r = api.optimize(parent, distill=True, student=student, X=X, y=y, epochs=3)
    t = check_lineage(r, "distill into Sequential (T=4, alpha=0.5, 3 epochs)")
    assert r.baseline is not None
    assert "accuracy" in r.baseline.metrics
    assert float(t["km.opt.labels_only_accuracy"]) == pytest.approx(r.baseline.metrics["accuracy"])
    assert r.figures.params < r.parent_figures.params
    text = display_optimize.optimize_text(r)
    assert "labels only" in text
    assert "distillation helped" in text or "did not help" in text
    history = _store(load_settings()).client.get_metric_history(r.run_id, "val_loss")
    assert len(history) == 3  # logged as a training run
    # validated on the plain labels, as %train is: its curves and table have the accuracy
    accuracy = _store(load_settings()).client.get_metric_history(r.run_id, "accuracy")
    assert {1, 2, 3} <= {m.step for m in accuracy}
    assert all(0 <= m.value <= 1 for m in accuracy)


def test_optimize_trainings_are_named_for_the_user(parent, digits):
    """The training widget's title names what is trained, not a class such as GraphModule."""
    titles: list[str] = []

    class Titles:  # a reporter that keeps the titles it is given
        def start(self, epochs: int, steps: int, title: str) -> None:
            titles.append(title)

        def __getattr__(self, name: str) -> Any:
            return lambda *a, **k: False

    X, y = digits
    student = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    api.optimize(parent, distill=True, student=student, X=X, y=y, epochs=1, progress=Titles())
    api.optimize(parent, prune=0.3, X=X, y=y, finetune_epochs=1, progress=Titles())
    assert titles == [f"Sequential distilled from {parent}", f"{parent} pruned: fine-tuning"]


def test_without_data_says_no_validation(parent):
    r = api.optimize(parent, export="onnx", name="digits-onnx")
    assert r.name == "digits-onnx"
    assert r.figures.metrics == {}
    assert not r.validated
    assert "no validation data" in display_optimize.optimize_text(r)


# -- serving ------------------------------------------------------------------------------------
def _post(settings: Any, body: bytes, content_type: str) -> tuple[np.ndarray, str]:
    import requests

    status = api.server_status(settings=settings)
    r = requests.post(
        f"{status.url}/v1/models/digits:predict",
        data=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {api.server_token()}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    if r.headers["Content-Type"] == "application/x-npy":  # an npy body is answered in npy
        return np.load(io.BytesIO(r.content), allow_pickle=False), r.headers["X-Model-Version"]
    return np.asarray(r.json()["predictions"]), r.headers["X-Model-Version"]


def test_onnx_version_serves_swaps_and_rolls_back(parent, digits):
    X, _ = digits
    settings = load_settings()
    onnx_version = next(v.version for v in api.models()[0].versions if v.format == "onnx")
    assert api.deploy(f"digits@{onnx_version}").version == onnx_version
    buf = io.BytesIO()
    np.save(buf, X[:256])
    via_npy, served_by = _post(settings, buf.getvalue(), "application/x-npy")
    via_json, _ = _post(
        settings, json.dumps({"instances": X[:5].tolist()}).encode(), "application/json"
    )
    assert served_by == str(onnx_version)
    assert via_npy.shape == (256, 10)
    np.testing.assert_allclose(via_json, via_npy[:5], atol=1e-5)
    labels = api.predict("digits", X[:3])
    assert labels.shape == (3,)
    assert api.deploy("digits@1").version == 1  # hot swap to the pt2 parent
    torch_out, served_by = _post(settings, buf.getvalue(), "application/x-npy")
    assert served_by == "1"
    np.testing.assert_allclose(torch_out, via_npy, atol=1e-4)
    assert api.rollback("digits").version == onnx_version
    assert _post(settings, buf.getvalue(), "application/x-npy")[1] == str(onnx_version)


def test_tampered_onnx_version_is_refused(parent):
    r = api.optimize(parent, export="onnx", name="digits-tamper")
    store = _store(load_settings())
    path = Path(store.local_path(store.resolve("digits-tamper", r.version))) / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DeployFailed, match="changed since registration"):
        api.deploy(f"digits-tamper@{r.version}")
    # the kernel loads a version to optimize through the same check as the inference process
    with pytest.raises(IntegrityError, match="changed since registration"):
        api.optimize(f"digits-tamper@{r.version}", export="onnx", name="digits-tamper-2")


# -- what cannot be done, in one line -----------------------------------------------------------
@pytest.fixture(scope="module")
def odd_models(parent, digits) -> None:
    X, _ = digits
    api.register(Scale(), X[:5], name="scale", task="other")
    api.register(nn.Sequential(nn.Linear(64, 10)), X[:5], name="linear", task="classification")
    assert api.register(Branchy(), X[:5], name="branchy", task="classification").format == "pickle"


@pytest.mark.parametrize(
    ("ref", "options", "message"),
    [
        ("scale@1", {"quantize": "dynamic"}, "no matrix multiplication, convolution or embedding"),
        ("linear@1", {"prune": 0.5, "structured": True}, "structured pruning found no Linear"),
        ("scale@1", {"prune": 0.5}, "no weight matrix or kernel to prune"),
        ("digits@1", {}, "choose one optimization"),
        ("digits@1", {"prune": 0.5, "distill": True}, "got prune and distill"),
        ("digits@1", {"distill": True}, "needs a student model and training data"),
        ("digits@1", {"quantize": "static"}, "needs calibration rows"),
        ("digits@2", {"prune": 0.5}, "is an ONNX version"),
        ("branchy@1", {"quantize": "static", "calibration": np.ones((4, 64))}, "pickle format"),
        ("branchy@1", {"export": "onnx"}, "pickle format"),
        ("branchy@1", {"prune": 0.5, "structured": True}, "pickle format"),
    ],
)
def test_cannot_optimize_says_why_in_one_line(odd_models, ref, options, message):
    with pytest.raises(InvalidInput, match=message) as info:
        api.optimize(ref, **options)
    assert "\n" not in str(info.value)


def test_pickle_version_quantizes_with_torch_ao(odd_models, digits):
    X, y = digits
    r = api.optimize("branchy@1", quantize="dynamic", X=X, y=y)
    assert (r.format, r.recipe) == ("pickle", "quantize dynamic int8 (torch.ao)")
    assert any("torch.export could not trace it" in note for note in r.notes)
    assert r.figures.params == r.parent_figures.params  # int8 weights count like fp32 ones
    assert r.figures.size_bytes < r.parent_figures.size_bytes
    assert abs(r.figures.metrics["accuracy"] - r.parent_figures.metrics["accuracy"]) <= 0.05


# -- the magic ----------------------------------------------------------------------------------
def test_magic_makes_a_version_and_shows_the_table(ns, parent, run_cell):
    r = run_cell(ns, "r = %optimize digits@1 --export onnx --quantize dynamic --data X y\nr")
    assert r.format == "onnx"
    assert r.recipe.startswith("quantize dynamic int8")
    text = ns.display_formatter.format(r)[0]["text/plain"]
    assert "digits@1 (parent)" in text
    assert "new vs parent" in text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("digits@1 --prune 2", "between 0 and 1"),
        ("digits@1 --structured", "--structured goes with --prune"),
        ("digits@1 --quantize int4", "invalid choice"),
        ("digits@1 --student Net() --epochs 2", "--student goes with --distill"),
        ("scale@1 --quantize dynamic", "nothing|no matrix multiplication"),
        ("digits@1 --distill --student nope --data X y", "cannot evaluate --student"),
    ],
)
def test_magic_errors_are_one_line(ns, odd_models, line, message):
    with pytest.raises(UsageError, match=message) as info:
        ns.run_line_magic("optimize", line)
    assert "\n" not in str(info.value)


def test_load_ext_imports_no_optimization_library(tmp_path):
    code = (
        "import sys\nfrom IPython.core.interactiveshell import InteractiveShell\n"
        "ip = InteractiveShell.instance()\nip.run_line_magic('load_ext', 'kernel_magics')\n"
        "assert 'optimize' in ip.magics_manager.magics['line']\n"
        "heavy = [m for m in ('onnx', 'onnxruntime', 'onnxscript', 'kernel_magics.optimize')"
        " if m in sys.modules]\nassert not heavy, heavy\n"
    )
    env = {**os.environ, "KERNEL_MAGICS_AUTOSTART": "0", "KERNEL_MAGICS_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
