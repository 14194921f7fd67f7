"""Run All in JupyterLab completes every bundled notebook.

JupyterLab sends every cell's ``execute_request`` at once; the cells behind a ``%train`` wait
while the training widget reads the kernel's shell queue for its Stop button. nbval and
papermill send one cell at a time and cannot see what that breaks (once, every queued cell
stayed ``[*]`` forever), so each notebook here is opened in Chromium, run with Run All as a user
would, with the training widget on (``KERNEL_MAGICS_PROGRESS`` unset: "auto" picks it in a
kernel), and every code cell must end with an execution count and no error output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from kit.lab import LabServer, open_notebook, start_lab
from playwright.sync_api import Page

from kernel_magics import api
from kernel_magics.config import load_settings
from kernel_magics.serving.process.cleanup import state_pids, stop_pids

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
BUNDLED = ["quickstart.ipynb", "any_model.ipynb", "optimize.ipynb", "preprocessing.ipynb"]
RUN_ALL_TIMEOUT_MS = 480_000  # the longest notebook trains several models on 2 busy cores

CELL_STATES = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const kernel = panel?.sessionContext?.session?.kernel;
    const cells = panel.content.widgets.filter(c => c.model.type === 'code');
    return {
        idle: kernel?.status === 'idle',
        counts: cells.map(c => c.model.executionCount),
        errors: cells.flatMap((c, i) => c.model.outputs.toJSON()
            .filter(o => o.output_type === 'error')
            .map(o => `cell ${i + 1}: ${o.ename}: ${o.evalue}`)),
    };
}"""


@pytest.fixture(scope="module")
def run_all_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    base = tmp_path_factory.mktemp("lab-run-all")
    home = base / "km-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_MAGICS_", "MLFLOW_"))}
    env.update(KERNEL_MAGICS_HOME=str(home), KERNEL_MAGICS_AUTOSTART="0")
    server = start_lab(base, env)
    settings = load_settings(home=home)
    try:
        server.wait_ready()
        for name in BUNDLED:
            shutil.copy(NOTEBOOKS / name, server.root / name)
        yield server
    finally:
        server.stop()
        pids = state_pids(settings.state_file)
        with contextlib.suppress(Exception):
            api.server_stop(settings=settings)
        stop_pids(pids)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("notebook", BUNDLED)
def test_run_all_completes_the_notebook(run_all_lab: LabServer, page: Page, notebook: str) -> None:
    open_notebook(page, run_all_lab, f"run-all-{notebook.split('.')[0]}", notebook)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # Done: every code cell has its count and the kernel is idle (a lost cell keeps null)
    page.wait_for_function(
        f"() => {{ const s = ({CELL_STATES})(); "
        "return s.errors.length > 0 || (s.idle && s.counts.every(n => n !== null)); }",
        timeout=RUN_ALL_TIMEOUT_MS,
        polling=1000,
    )
    states = page.evaluate(CELL_STATES)
    assert states["errors"] == [], states["errors"]
    counts = states["counts"]
    assert counts == list(range(counts[0], counts[0] + len(counts))), counts
    with contextlib.suppress(Exception):  # free the kernel's memory for the next notebook
        page.evaluate("() => window.jupyterapp.commands.execute('kernelmenu:shutdown')")
