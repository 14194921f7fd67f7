"""Models in a worker (``request/model.py``, ``formats/``, ``model_table.py``,
``inflight.py``): real models loaded from folders laid out as MLflow writes them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from kit.model_dirs import TinyMLP, rows, run_loop

from kernel_magics.errors import DeployFailed, InvalidInput
from kernel_magics.formats.loaders import LOADERS, Graph, loader, loader_for
from kernel_magics.records import HistoryEvent, ModelSpec
from kernel_magics.serving.request.codecs import PayloadTooLarge
from kernel_magics.serving.request.inflight import InFlight
from kernel_magics.serving.request.model import LoadedModel
from kernel_magics.serving.request.model_table import ModelTable, model_from_spec


def spec_for(folder: Path, version: int = 1, fmt: str | None = "pt2", **kw: object) -> ModelSpec:
    return ModelSpec(name="m", version=version, path=str(folder), sha256="x", format=fmt, **kw)


def loaded(folder: Path, version: int = 1, fmt: str | None = "pt2", batch: int = 16) -> LoadedModel:
    model = model_from_spec(spec_for(folder, version, fmt), batch, 0.0)
    model.load()
    model.warm()
    return model


def expected(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()


# -- loading --------------------------------------------------------------------------------
def test_pt2_with_a_dynamic_batch_takes_the_fast_path(model_dir):
    mlp = TinyMLP()
    model = loaded(model_dir(mlp, rows(4)))
    assert (model.fmt, model.fast_path, model.fixed_batch) == ("pt2", True, None)
    x = rows(5, seed=1)
    np.testing.assert_allclose(model.forward(x), expected(mlp, x), rtol=1e-6, atol=1e-6)
    assert model.load_ms > 0
    assert model.warm_ms > 0
    assert model.response_headers == b"x-model-name: m\r\nx-model-version: 1\r\n"
    described = model.describe()
    assert described["input"] == {"dtype": "float32", "shape": [-1, 4]}
    assert described["output"] == {"dtype": "float32", "shape": [-1, 3]}


def test_a_one_row_example_freezes_the_batch_and_forward_steps_through_it(model_dir):
    mlp = TinyMLP()
    model = loaded(model_dir(mlp, rows(1)))
    assert model.fixed_batch == 1
    x = rows(3, seed=2)
    np.testing.assert_allclose(model.forward(x), expected(mlp, x), rtol=1e-6, atol=1e-6)


def test_a_static_batch_above_one_pads_the_last_step(model_dir):
    mlp = TinyMLP(seed=6)
    model = loaded(model_dir(mlp, rows(3), dynamic_batch=False))
    assert model.fixed_batch == 3
    assert model.fast_path
    for n in (1, 3, 5, 7):  # 7 rows: steps of 3, 3, then 1 real row padded to 3
        x = rows(n, seed=n)
        np.testing.assert_allclose(model.forward(x), expected(mlp, x), rtol=1e-6, atol=1e-6)


class Conv(torch.nn.Module):
    """N×1×8×8 images → N×2×8×8 feature maps: input and output of rank 4."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class Embedder(torch.nn.Module):
    """N×T int64 token ids → N×4."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(8)
        self.embed = torch.nn.Embedding(50, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x).mean(1)


def test_n_d_and_integer_models_load_warm_and_keep_the_fast_path(model_dir):
    images = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    tokens = np.random.default_rng(0).integers(0, 50, (3, 6))
    for module, example in ((Conv(), images), (Embedder(), tokens)):
        model = loaded(model_dir(module, example, name=type(module).__name__))
        assert (model.fast_path, model.fixed_batch) == (True, None)
        x = np.concatenate([example] * 3)  # more rows than the example: the batch is free
        np.testing.assert_allclose(
            model.forward(model.check(x, 100)), expected(module, x), rtol=1e-6, atol=1e-6
        )
    assert model.describe()["input"] == {"dtype": "int64", "shape": [-1, 6]}


def test_pickle_format(model_dir):
    mlp = TinyMLP(seed=3)
    model = loaded(model_dir(mlp, rows(4), fmt="pickle"), fmt="pickle")
    assert (model.fmt, model.fast_path) == ("pickle", False)
    x = rows(2)
    np.testing.assert_allclose(model.forward(x), expected(mlp, x), rtol=1e-6, atol=1e-6)


def test_the_loader_is_picked_by_the_format_tag_and_files_only_without_it(model_dir):
    pt2 = model_dir(TinyMLP(), rows(4), name="pt2")
    pth = model_dir(TinyMLP(), rows(4), fmt="pickle", name="pth")
    assert set(LOADERS) >= {"pt2", "pickle"}
    assert loader_for(pt2, "pt2").format == "pt2"
    assert loader_for(pt2, None).format == "pt2"  # an untagged (older) version
    assert loader_for(pth, None).format == "pickle"
    with pytest.raises(DeployFailed, match="no data/model.pth"):
        loader_for(pt2, "pickle")  # the tag wins over what happens to be there
    with pytest.raises(DeployFailed, match="model format 'tflite' is not served"):
        loader_for(pt2, "tflite")
    empty = pt2.parent / "empty"
    empty.mkdir()
    with pytest.raises(DeployFailed, match="no data/model.pt2 or data/model.pth"):
        loader_for(empty, None)
    with pytest.raises(DeployFailed, match=r"m v1: no data/model.pth"):
        loaded(pt2, fmt="pickle")


@pytest.fixture
def torchscript() -> Iterator[str]:
    """A third format, registered as any new one would be, and removed afterwards."""

    @loader("torchscript", "data/model.ts", flavor="pytorch")
    def load_torchscript(path: Path) -> Graph:
        return Graph(torch.jit.load(str(path)))

    yield "torchscript"
    del LOADERS["torchscript"]


def test_a_new_format_is_one_registered_function(model_dir, torchscript):
    mlp = TinyMLP(seed=4)
    folder = model_dir(mlp, rows(4))
    torch.jit.trace(mlp.eval(), torch.from_numpy(rows(2))).save(str(folder / "data" / "model.ts"))
    model = loaded(folder, fmt=torchscript)
    assert model.fmt == "torchscript"
    x = rows(3, seed=5)
    np.testing.assert_allclose(model.forward(x), expected(mlp, x), rtol=1e-6, atol=1e-6)


def test_a_new_format_brings_its_mlflow_flavor(model_dir):
    """A folder is read when some registered format loads its flavor: a new format needs no
    edit of the folder reader, and a flavor nothing loads is refused with what is served."""
    import yaml

    mlp = TinyMLP(seed=6)
    folder = model_dir(mlp, rows(4))
    meta = yaml.safe_load((folder / "MLmodel").read_text())
    meta["flavors"] = {"torchscript": {"file": "data/model.ts"}}
    (folder / "MLmodel").write_text(yaml.safe_dump(meta))
    torch.jit.trace(mlp.eval(), torch.from_numpy(rows(2))).save(str(folder / "data" / "model.ts"))
    with pytest.raises(DeployFailed, match=r"has torchscript; served: (\w+, )*onnx, pytorch"):
        loaded(folder, fmt="pt2")

    @loader("torchscript", "data/model.ts", flavor="torchscript")
    def load_torchscript(path: Path) -> Graph:
        return Graph(torch.jit.load(str(path)))

    try:
        model = loaded(folder, fmt="torchscript")
        x = rows(3, seed=7)
        np.testing.assert_allclose(model.forward(x), expected(mlp, x), rtol=1e-6, atol=1e-6)
    finally:
        del LOADERS["torchscript"]


def test_broken_folders_fail_the_load_with_one_line(model_dir, tmp_path):
    with pytest.raises(DeployFailed, match="no MLmodel file"):
        loaded(tmp_path)
    folder = model_dir(TinyMLP(), rows(4))
    (folder / "data" / "model.pt2").write_bytes(b"not a zip")
    with pytest.raises(DeployFailed, match=r"m v1: loading pt2 model failed: \w+") as info:
        loaded(folder)
    assert "\n" not in str(info.value)


# -- checking requests ----------------------------------------------------------------------
@pytest.fixture
def mlp_model(model_dir) -> LoadedModel:
    return loaded(model_dir(TinyMLP(), rows(4)))


def test_check_casts_and_makes_contiguous(mlp_model):
    out = mlp_model.check(np.asfortranarray(rows(3).astype(np.float64)), 10)
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, rows(3))
    ints = mlp_model.check(np.ones((2, 4), dtype=np.int64), 10)
    assert ints.dtype == np.float32


# a float64 → float32 overflow warns before the finiteness check refuses it (the worker
# filters that warning at start-up)
@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
@pytest.mark.parametrize(
    ("array", "error", "message"),
    [
        (np.ones((2, 5)), InvalidInput, "expected rows of 4 features, got 5"),
        (np.ones(4), InvalidInput, "got a single row"),
        (np.ones((2, 2, 2)), InvalidInput, "expected a 2-D array of rows shaped (N, 4), got shape"),
        (np.ones((0, 4)), InvalidInput, "empty batch"),
        (np.ones((11, 4)), PayloadTooLarge, "11 rows is over the limit of 10 rows per request"),
        (np.full((1, 4), np.nan), InvalidInput, "input contains NaN or infinity"),
        (np.full((1, 4), 1e39), InvalidInput, "input contains NaN or infinity"),  # float32 inf
    ],
    ids=["features", "single-row", "rank", "empty", "too-many", "nan", "overflow"],
)
def test_check_refuses_with_one_line(mlp_model, array, error, message):
    with pytest.raises(error) as info:
        mlp_model.check(array, 10)
    assert message in str(info.value)


# -- the table ------------------------------------------------------------------------------
def event(to_version: int | None, from_version: int | None = None) -> HistoryEvent:
    return HistoryEvent("2026-01-01T00:00:00", "deploy", from_version, to_version)


def test_stage_activate_standby_and_rollback_by_swap(model_dir):
    table = ModelTable()
    v1 = loaded(model_dir(TinyMLP(), rows(4), name="v1"), version=1)
    v2 = loaded(model_dir(TinyMLP(seed=1), rows(4), name="v2"), version=2)
    table.stage(v1)
    assert table.activate("m", 1, (event(1),)) == (v1, None)
    table.stage(v2)
    assert table.activate("m", 2, (event(1), event(2, 1))) == (v2, v1)
    assert table.live["m"] is v2
    assert table.standby["m"] is v1
    assert not table.staged
    # a rollback to the standby loads nothing: it is reusable, staged and activated again
    reused = table.reusable(spec_for(Path(v1.path), 1), 16, 0.0)
    assert reused is v1
    table.stage(reused)
    assert table.activate("m", 1, None) == (v1, v2)
    assert table.standby["m"] is v2
    assert [e["to_version"] for e in table.describe("m")["history"]] == [1, 2]  # kept


def test_redeploying_the_live_version_replaces_nothing(mlp_model):
    table = ModelTable()
    table.stage(mlp_model)
    table.activate("m", 1, None)
    assert table.activate("m", 1, None) == (mlp_model, mlp_model)  # not staged: the live one
    assert "m" not in table.standby
    with pytest.raises(KeyError, match="m v7 is not staged in this worker"):
        table.activate("m", 7, None)


def test_reusable_only_when_everything_matches(mlp_model):
    table = ModelTable()
    table.stage(mlp_model)
    table.activate("m", 1, None)
    folder = Path(mlp_model.path)
    assert table.reusable(spec_for(folder), 16, 0.0) is mlp_model
    assert table.reusable(spec_for(folder, max_batch_size=8), 16, 0.0) is None
    assert table.reusable(spec_for(folder, max_wait_ms=5.0), 16, 0.0) is None
    assert table.reusable(spec_for(folder, version=2), 16, 0.0) is None
    assert table.reusable(spec_for(folder.parent), 16, 0.0) is None


def test_discard_and_unload(model_dir):
    table = ModelTable()
    v1 = loaded(model_dir(TinyMLP(), rows(4), name="v1"), version=1)
    v2 = loaded(model_dir(TinyMLP(), rows(4), name="v2"), version=2)
    table.stage(v1)
    table.stage(v2)
    assert table.discard("m", 2) == 1
    assert list(table.staged) == [("m", 1)]
    assert table.discard("other") == 0
    table.activate("m", 1, (event(1),))
    table.stage(v2)
    assert table.discard("m") == 1
    assert table.unload("m", (event(1), event(None, 1))) is v1
    assert not table.live
    assert not table.standby
    assert table.unload("m", None) is None


def test_model_from_spec_fills_unset_options_from_the_worker_settings(tmp_path):
    spec = spec_for(tmp_path, fmt="pickle", task="regression")
    model = model_from_spec(spec, 64, 2.0)
    assert (model.max_batch_size, model.max_wait_ms, model.format) == (64, 2.0, "pickle")
    set_ = model_from_spec(spec_for(tmp_path, max_batch_size=8, max_wait_ms=0.0), 64, 2.0)
    assert (set_.max_batch_size, set_.max_wait_ms) == (8, 0.0)
    assert model.task == "regression"
    assert model.sha256 == "x"


def test_inflight_drains():
    async def scenario() -> None:
        inflight = InFlight()
        assert await inflight.drained(0.01)
        inflight.enter()
        inflight.enter()
        assert not await inflight.drained(0.01)
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, inflight.leave)
        loop.call_later(0.04, inflight.leave)
        assert await inflight.drained(1.0)
        assert inflight.count == 0

    run_loop(scenario())


def test_settle_heap_freezes_what_lives_and_collects_what_was_dropped() -> None:
    """After a worker loads a model (``worker_routes._load_and_warm``): the objects alive are
    left out of later full collections, and a model dropped since the last load (here a
    reference cycle) is still collected, not kept frozen."""
    import gc
    import weakref

    from kernel_magics.exiting import settle_heap

    class Node:
        pass

    try:
        first = Node()
        first.me = first  # type: ignore[attr-defined]  # a cycle: only the collector frees it
        gone = weakref.ref(first)
        settle_heap()
        assert gc.get_freeze_count() > 0
        del first
        gc.collect()
        assert gone() is not None  # frozen: full collections no longer walk it
        settle_heap()
        assert gone() is None  # the next settle collects what was dropped since
    finally:
        gc.unfreeze()
