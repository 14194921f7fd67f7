"""The store facade and lifecycle transitions against a real MLflow SQLite store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from kit.home import seed_store

from kernel_magics.config import load_settings
from kernel_magics.errors import IntegrityError, InvalidInput, NotFound
from kernel_magics.naming import validate_name
from kernel_magics.registration import register_version
from kernel_magics.serving.control.lifecycle import Lifecycle
from kernel_magics.store import Store, parse_ref


def _register_version(store: Store, name: str, seed: int) -> int:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    example = np.random.default_rng(seed).random((3, 4), dtype=np.float32)
    registered = register_version(
        store, model, example, name=name, task="classification", classes=[0, 1, 2]
    )
    return registered.version


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, empty_store: Path) -> Store:
    home = tmp_path_factory.mktemp("home")
    seed_store(home, empty_store)
    s = Store(load_settings(home=home, tracking_uri=""))
    for seed in (1, 2, 3):
        _register_version(s, "toy", seed)
    return s


def test_names_and_refs() -> None:
    assert parse_ref("digits") == ("digits", None)
    assert parse_ref("digits@2") == ("digits", "2")
    assert parse_ref("digits@production") == ("digits", "production")
    for bad in ("../etc", "a/b", "", ".hidden", "x" * 200, "sp ace"):
        with pytest.raises(InvalidInput):
            validate_name(bad)
    with pytest.raises(InvalidInput):
        parse_ref("digits@")


def test_embedded_store_lives_in_home(store: Store) -> None:
    home = store.settings.home
    assert (home / "mlflow.db").is_file()
    assert store.uri == f"sqlite:///{home / 'mlflow.db'}"
    path = Path(store.local_path(store.resolve("toy", 1)))
    assert str(path).startswith(str(home / "artifacts"))
    assert (path / "data" / "model.pt2").is_file()  # pt2: no pickled code


def test_resolve(store: Store) -> None:
    assert store.resolve("toy").version == 3
    assert store.resolve("toy", "2").version == 2
    assert store.resolve("toy", 1).classes == [0, 1, 2]
    with pytest.raises(NotFound, match="no version 9"):
        store.resolve("toy", 9)
    with pytest.raises(NotFound, match="no registered model named 'nope'"):
        store.resolve("nope")
    with pytest.raises(NotFound, match="alias"):
        store.resolve("toy", "staging")


def test_deploy_rollback_history(store: Store) -> None:
    life = Lifecycle(store.settings, store)
    plan = life.plan("toy", "deploy", "1")
    assert (plan.from_version, plan.to_version) == (None, 1)
    life.commit(plan)
    life.commit(life.plan("toy", "deploy", None))  # newest = 3
    assert store.live_version("toy") == 3
    back = life.plan("toy", "rollback")
    assert (back.from_version, back.to_version) == (3, 1)
    history = life.commit(back)
    assert [(e["action"], e["from_version"], e["to_version"]) for e in history] == [
        ("deploy", None, 1),
        ("deploy", 1, 3),
        ("rollback", 3, 1),
    ]
    assert store.live_version("toy") == 1
    assert [s.version for s in life.live_specs()] == [1]
    # rolling back again returns to where the last rollback started
    assert life.plan("toy", "rollback").to_version == 3
    life.commit(life.plan("toy", "undeploy"))
    assert store.live_version("toy") is None
    assert store.history("toy")[-1]["action"] == "undeploy"
    with pytest.raises(InvalidInput, match="not deployed"):
        life.plan("toy", "rollback")


def test_tampered_artifact_is_refused(tmp_path: Path, empty_store: Path) -> None:
    seed_store(tmp_path, empty_store)
    s = Store(load_settings(home=tmp_path, tracking_uri=""))
    _register_version(s, "tamper", 7)
    life = Lifecycle(s.settings, s)
    assert life.plan("tamper", "deploy").spec is not None
    weights = Path(s.local_path(s.resolve("tamper", 1))) / "data" / "model.pt2"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte after registration
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="changed since registration"):
        life.plan("tamper", "deploy")
    weights.unlink()
    with pytest.raises(IntegrityError):
        life.plan("tamper", "deploy")
    assert s.live_version("tamper") is None  # nothing half-done


def test_every_model_is_listed_past_a_page(tmp_path: Path, empty_store: Path) -> None:
    """MLflow answers searches a page at a time: the store reads every page."""
    seed_store(tmp_path, empty_store)
    s = Store(load_settings(home=tmp_path, tracking_uri=""))
    names = [f"m{i:04d}" for i in range(1005)]
    for name in names:
        s.client.create_registered_model(name)
    assert s.model_names() == names
    assert s.live_models() == {}
