"""Shared fixtures: a throwaway home per test module, the real IPython shell with the extension
loaded, the digits data, and clean-up of any inference process a module started. And the
test tiers: every test gets one marker by what it starts (see ``TIERS``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kit.children import SETTINGS_PREFIXES
from kit.home import seed_store, stop_inference_process
from kit.shell import interactive_shell, run_cell

from kernel_magics.config import Settings, load_settings
from kernel_magics.exiting import skip_exit_collection
from kernel_magics.serving.process.cleanup import state_pids, stop_pids
from kernel_magics.targets.local import LocalTarget

# -- tiers ----------------------------------------------------------------------------------------
# The markers pyproject.toml registers, cheapest first. `make test-unit` runs `-m unit`.
#   unit     in this process only: no store on disk, no inference process, no subprocess
#   store    in this process against a real MLflow store in a temp folder (train, register,
#            evaluate): seconds per module for MLflow's SQLite set-up and model logging
#   process  starts the inference process or other processes (kernels, the CLI, torchrun)
#   browser  a real jupyter lab driven by Chromium
#   service  a service beside the tests: PostgreSQL, a Ray head, MLServer
TIER_ORDER = ("unit", "store", "process", "browser", "service")
# By path under tests/ (a file, else its closest folder). Every test file needs one: a new file
# is an error at collection until it is classified here.
TIERS = {
    "browser": "browser",
    "ray": "service",
    "optional": "service",
    "lab/test_lab_routes.py": "unit",  # its store tests are raised by the `trained` fixture
    "serving": "process",
    "serving/unit": "unit",
    "serving/unit/test_transitions.py": "store",
    "training": "unit",
    "training/test_train_any_model.py": "store",
    "training/test_distributed.py": "process",
    "test_records.py": "unit",
    "test_store.py": "store",
    "test_register.py": "store",
    "test_evaluation.py": "store",
    "test_explain.py": "store",
    "test_magics.py": "process",  # `%deploy nope` starts the process while the name is checked
    "test_optimize.py": "process",  # ONNX versions served
    "test_preprocessing.py": "process",
    "test_autostart.py": "process",
    "test_cli.py": "process",
    "test_dashboards.py": "process",
    "test_lifecycle_e2e.py": "process",
    "test_pipelines.py": "process",
    "test_store_faults.py": "process",
    "test_store_server.py": "service",
    "test_kernel_queue.py": "process",  # a real ipykernel through jupyter_client
    "test_kills.py": "process",
    "test_layers.py": "unit",  # its import check in a fresh interpreter is marked process
    "test_metric_names.py": "unit",
    "frameworks": "process",
    "generative": "process",
    "quality/test_canary_judge.py": "process",  # one inference process, a restart
    "quality": "process",
    "quality/test_drift.py": "store",
    "quality/test_drift_statistics.py": "unit",
    "quality/test_quality_units.py": "unit",
}
# A test using one of these fixtures is at least in its tier, whatever its path.
FIXTURE_TIERS = {
    "trained": "store",
    "client": "process",
    "postgres": "service",
    "ray_head": "service",
    "lab": "browser",
}
TESTS = Path(__file__).resolve().parent


def _path_tier(path: Path) -> str | None:
    relative = path.relative_to(TESTS)
    for key in (relative, *relative.parents):
        if key.as_posix() in TIERS:
            return TIERS[key.as_posix()]
    return None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``-m unit`` alone does not import the other tiers' modules (torch, MLflow, Playwright:
    seconds of collection). Sound because a file's tier is its tests' lowest: fixtures and
    explicit markers only ever raise a test above its path's tier."""
    if config.getoption("markexpr") != "unit" or not collection_path.name.startswith("test_"):
        return None
    tier = _path_tier(collection_path)
    return None if tier in (None, "unit") else True


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give every test its tier: an explicit tier marker (only ever above the path's tier)
    wins; else the highest of its path's and its fixtures' tiers."""
    for item in items:
        if any(item.get_closest_marker(tier) for tier in TIER_ORDER):
            continue
        tier = _path_tier(item.path)
        if tier is None:
            raise pytest.UsageError(
                f"{item.path.relative_to(TESTS)} has no tier: add it to TIERS in tests/conftest.py"
            )
        for name in getattr(item, "fixturenames", ()):
            if name in FIXTURE_TIERS:
                tier = max(tier, FIXTURE_TIERS[name], key=TIER_ORDER.index)
        item.add_marker(tier)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session is over: skip the seconds of collecting torch's and MLflow's heap at exit."""
    skip_exit_collection()


# Programs a unit test must not start: this interpreter and everything in its bin folder (the
# inference process, the CLI, jupyter, torchrun, mlflow, ray) and the services' launchers.
_OURS = (str(Path(sys.executable).parent) + "/", sys.executable)
_SERVICES = {"runuser", "unshare", "chromium"}
_spawned: list[str] | None = None  # while a unit test runs: what it started


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _spawned is None or event != "subprocess.Popen":
        return
    program, argv = str(args[0] or ""), args[1]
    first = argv if isinstance(argv, (str, bytes)) else (argv[0] if argv else "")
    names = {os.fsdecode(program), os.fsdecode(first)}
    if any(n.startswith(_OURS) or Path(n).name in _SERVICES for n in names if n):
        _spawned.append(" ".join(map(os.fsdecode, [argv] if isinstance(argv, str) else argv)))


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def _unit_tests_start_nothing(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test in the unit tier that starts a process fails, naming it: the tier stays fast."""
    global _spawned
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    _spawned = []
    try:
        yield
        started = list(_spawned)
    finally:
        _spawned = None
    if started:
        pytest.fail(f"a unit test started {started[0][:200]!r}: give it the process tier")


@pytest.fixture(scope="session")
def empty_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An embedded MLflow store with its tables made, copied into each module's home: MLflow
    creates a store's tables through its whole chain of schema migrations, seconds per fresh
    home (the copy: milliseconds). None for ``-m unit``, whose tests open no store."""
    if request.config.getoption("markexpr") == "unit":
        return None
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("empty-store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(scope="module")
def km_home(tmp_path_factory: pytest.TempPathFactory, empty_store: Path | None) -> Iterator[Path]:
    """A fresh home folder (embedded SQLite store, its tables made) for one test module, set
    through the environment exactly as a user would; no MLFLOW_TRACKING_URI. Whatever
    inference process the module started there is stopped at the end."""
    home = tmp_path_factory.mktemp("km-home")
    if empty_store is not None:
        seed_store(home, empty_store)
    with pytest.MonkeyPatch.context() as mp:
        for key in list(os.environ):
            if key.startswith(SETTINGS_PREFIXES):
                mp.delenv(key)
        mp.setenv("KERNEL_MAGICS_HOME", str(home))
        mp.setenv("KERNEL_MAGICS_PROGRESS", "none")
        # Tests start the inference process when they need it (tests/test_autostart.py covers
        # the default, where %load_ext starts it): a process per module would only cost CPU.
        mp.setenv("KERNEL_MAGICS_AUTOSTART", "0")
        try:
            yield home
        finally:
            stop_inference_process(load_settings(home=home))


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Settings:
    """The module's settings, read from its home (a module overrides this for other ones)."""
    return load_settings()


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[LocalTarget]:
    """One running inference process for the module; stopped (by PID) at the end."""
    c = LocalTarget(settings)
    c.ensure_running(timeout=90)
    try:
        yield c
    finally:
        pids = state_pids(settings.state_file)  # read first: a clean stop removes the file
        c.stop()
        stop_pids(pids)  # whatever the polite stop left running


@pytest.fixture(scope="module")
def ip(km_home: Path) -> Iterator[Any]:
    """The real InteractiveShell with ``%load_ext kernel_magics`` (unloaded after the module)."""
    shell = interactive_shell()
    shell.run_line_magic("load_ext", "kernel_magics")
    yield shell
    shell.run_line_magic("unload_ext", "kernel_magics")


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits (no download), scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


@pytest.fixture(scope="session", name="run_cell")
def run_cell_fixture() -> Any:
    """``run_cell(shell, code)`` of ``kit.shell``, for the tests that take it as a fixture."""
    return run_cell


NET_CELL = """
import torch.nn as nn

class Net(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.layers(x)
"""


@pytest.fixture(scope="module")
def ns(ip: Any, digits: tuple[np.ndarray, np.ndarray]) -> Any:
    """The shell after a notebook's first cells: X and y loaded, ``Net`` defined in a cell
    (so the class lives in ``__main__``, as in a real notebook)."""
    X, y = digits
    ip.user_ns.update(X=X, y=y)
    run_cell(ip, NET_CELL)
    return ip
