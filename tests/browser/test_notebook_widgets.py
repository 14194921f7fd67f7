"""The notebook dashboards in JupyterLab with Chromium: ``%models`` renders the registry browser
whose Rollback button changes what the inference process serves, and ``%monitor`` polls it live
until its Stop button leaves a static copy in the notebook. With ``KM_SCREENSHOTS=1`` the
monitor's picture is published to docs/images/monitor.png."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
from kit.lab import MODEL, LabSession, open_notebook
from playwright.sync_api import Page, expect

from kernel_magics import api

CELLS = ["%load_ext kernel_magics", "%models", f"%monitor {MODEL} --interval 1"]


def write_notebook(folder: Path, name: str) -> None:
    cells = [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": c}
        for c in CELLS
    ]
    notebook = {
        "cells": cells,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (folder / name).write_text(json.dumps(notebook))


def publish(png: bytes, name: str) -> None:
    """With KM_SCREENSHOTS=1 the picture goes to docs/images/ (how docs/dashboards.md's is
    refreshed)."""
    if os.environ.get("KM_SCREENSHOTS") == "1":
        docs = Path(__file__).resolve().parents[2] / "docs" / "images"
        docs.mkdir(parents=True, exist_ok=True)
        (docs / name).write_bytes(png)


def live_and_served(lab: LabSession) -> tuple[int | None, int | None]:
    (summary,) = [s for s in api.models(settings=lab.settings) if s.name == MODEL]
    return summary.live_version, summary.served_version


def predict_for(lab: LabSession, seconds: float) -> threading.Thread:
    """Traffic for the monitor to show, from this process, in the background."""
    rows = np.random.default_rng(0).random((4, 64), dtype=np.float32)

    def run() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            api.predict(MODEL, rows, settings=lab.settings)
            time.sleep(0.01)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_models_and_monitor_widgets(lab: LabSession, page: Page, tmp_path: Path) -> None:
    if live_and_served(lab) != (2, 2):  # the session fixture's state: v1 then v2 deployed
        api.deploy(MODEL, 1, settings=lab.settings)
        api.deploy(MODEL, 2, settings=lab.settings)
    write_notebook(lab.server.root, "dashboards.ipynb")
    open_notebook(page, lab.server, "dashboards", "dashboards.ipynb")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    cells = page.locator(".jp-Notebook .jp-Cell")

    # %models: the registry browser, the live version selected; its static copy stays hidden
    browser = cells.nth(1)
    versions = browser.locator(".widget-dropdown select", has_text="LIVE")
    expect(versions).to_contain_text("v2 · LIVE", timeout=60_000)
    expect(browser.locator("[class^='km-static-']")).to_be_hidden()
    # the versions table (live v2 marked), then the selected version's details
    table = browser.locator(".widget-html-content").first
    expect(table).to_contain_text("v2LIVE")
    expect(browser.locator(".widget-html-content", has_text="digits v2").first).to_be_visible()
    browser.locator("button.jupyter-button", has_text="Rollback").click()
    expect(browser.locator(".widget-html-content", has_text="again")).to_contain_text(
        "digits", timeout=60_000
    )
    assert live_and_served(lab) == (1, 1)
    browser.locator(".jp-OutputArea-output").first.screenshot(path=str(tmp_path / "models.png"))
    expect(versions).to_contain_text("v1 · LIVE")

    # %monitor: live figures of the version now served, then a static copy when stopped
    monitor = cells.nth(2)
    expect(monitor).to_contain_text("Inference process at", timeout=60_000)
    traffic = predict_for(lab, 6.0)
    expect(monitor.locator("table").first).to_contain_text("v1")  # then its hidden copy
    expect(monitor.locator("svg polyline[data-label='digits']").first).to_be_attached()
    traffic.join()
    output = monitor.locator(".jp-OutputArea-output").first
    publish(output.screenshot(path=str(tmp_path / "monitor.png")), "monitor.png")
    monitor.locator("button.jupyter-button", has_text="Stop").click()
    expect(monitor.locator("button.jupyter-button")).to_have_count(0, timeout=30_000)
    expect(monitor.locator(".jp-OutputArea-output").first).to_contain_text("req/s")

    api.deploy(MODEL, 2, settings=lab.settings)  # as the session fixture left it
