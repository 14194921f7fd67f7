"""One training run in a child process, as a parallel papermill run makes it: the parallel
writers of the store tests (an embedded SQLite store, a PostgreSQL tracking server)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

# The environment variables that configure kernel-magics and MLflow.
SETTINGS_PREFIXES = ("KERNEL_MAGICS_", "MLFLOW_")

# argv: SEED NAME. Prints {"version", "run_id"}; a KernelMagicsError prints {"error", "kind"}
# and exits 3.
TRAIN_SCRIPT = textwrap.dedent(
    """
    import json, sys, numpy as np, torch
    from kernel_magics import api
    from kernel_magics.errors import KernelMagicsError
    seed = int(sys.argv[1])
    rng = np.random.default_rng(seed)
    X = rng.random((120, 6), dtype=np.float32)
    y = (X[:, 0] > 0.5).astype(int)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    try:
        r = api.train(net, X, y, name=sys.argv[2], epochs=2, progress="none", seed=seed)
    except KernelMagicsError as err:
        print(json.dumps({"error": str(err), "kind": type(err).__name__}))
        sys.exit(3)
    print(json.dumps({"version": r.version, "run_id": r.run_id}))
    """
)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without kernel-magics' and MLflow's settings, plus ``extra``: what a
    fresh shell on the same machine would have (the test run's own home stays out)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIXES)}
    env.update(extra)
    return env


def child_env(home: Path, **extra: str) -> dict[str, str]:
    """``clean_env`` with ``home`` as the home folder and no progress output."""
    return clean_env(KERNEL_MAGICS_HOME=str(home), KERNEL_MAGICS_PROGRESS="none", **extra)


def last_json(stdout: str) -> dict[str, Any]:
    """The last JSON line a child printed ({} when none)."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}
