"""The quickstart notebook, unchanged but for one ``%config`` line, against Ray Serve.

papermill runs ``notebooks/quickstart.ipynb`` in a fresh kernel with one cell added after
``%load_ext``: ``%config KernelMagics.target = "ray"``. The cluster's address and its HTTP
port come from the environment, as a team would set them once. Every cell of the notebook
(train, deploy, predict over HTTP against the kernel's model, a second version, rollback,
``%models``, ``%serve status``) must run without an error, and the store must end as the
notebook left it: v1 live after the rollback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from kit.ray_head import RayHead, ray_settings

from kernel_magics import api
from kernel_magics.store import Store

QUICKSTART = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"
NAME = "quick-ray"


def test_quickstart_runs_on_ray_with_one_config_line(
    km_home: Path, ray_head: RayHead, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import papermill

    nb = nbformat.read(QUICKSTART, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "%load_ext kernel_magics" in c.source)
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell('%config KernelMagics.target = "ray"'))
    source = tmp_path / "quickstart-ray.ipynb"
    nbformat.write(nb, source)
    monkeypatch.setenv("KERNEL_MAGICS_RAY_ADDRESS", ray_head.address)
    monkeypatch.setenv("KERNEL_MAGICS_PORT", str(ray_head.proxy_port))
    settings = ray_settings(km_home, ray_head)
    try:
        executed: Any = papermill.execute_notebook(
            str(source),
            str(tmp_path / "out.ipynb"),
            parameters={"epochs": 2, "name": NAME},
            kernel_name="python3",
            progress_bar=False,
        )
        outputs = "".join(
            str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
            for c in executed.cells
            for o in c.get("outputs", [])
        )
        assert "ray" in outputs.lower()  # %serve status names the target it reports on
        store = Store(settings)
        assert store.live_version(NAME) == 1  # deployed v1, v2, rolled back to v1
        events = [(e.action, e.to_version) for e in api.history(NAME, settings=settings)]
        assert events == [("deploy", 1), ("deploy", 2), ("rollback", 1)]
    finally:
        api.undeploy(NAME, settings=settings)  # the session's head serves the other tests too
