"""Fixtures of the browser tests: a store with a trained and deployed model, a real
``jupyter lab`` serving it, and Debian's Chromium driven by Playwright.

Everything is started once per module (test_lab_panel.py is the only one) and stopped by PID
when it ends: the Jupyter server (kernels first) and the inference process the test home
started.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from kit.children import clean_env
from kit.home import stop_inference_process
from kit.lab import MODEL, LabServer, LabSession, start_lab
from playwright.sync_api import Browser, Page, expect, sync_playwright

from kernel_magics import api
from kernel_magics.config import Settings, load_settings

CHROMIUM = "/usr/bin/chromium"  # Debian's (`make setup-system`); Playwright downloads none
# what FACTS.md measured: without the background-networking flags Chromium keeps dialling out
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
# Lab pages on 2 busy cores: the first answer from a fresh server can take seconds.
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)


def _train_and_deploy(settings: Settings, server: LabServer) -> None:
    """Two versions of a tiny MLP on scikit-learn's bundled digits; v1 then v2 deployed, so a
    rollback has somewhere to go."""
    import torch.nn as nn
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    for hidden in (16, 32):
        model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        # lr: one epoch of the default leaves accuracies near chance in the screenshot
        api.train(model, X, y, name=MODEL, epochs=1, lr=0.01, progress="none", settings=settings)
    # The server's first call to the store imports MLflow (seconds): make it while the
    # inference process starts, not while the panel waits. Only now: two processes creating
    # a brand-new MLflow SQLite file at once can break its schema set-up.
    with ThreadPoolExecutor(1) as pool:
        warm = pool.submit(_first_call, server)
        api.deploy(MODEL, 1, settings=settings)
        api.deploy(MODEL, 2, settings=settings)
        warm.result()


def _first_call(server: LabServer) -> None:
    server.wait_ready()
    server.request("GET", "kernel-magics/models").raise_for_status()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabSession]:
    base = tmp_path_factory.mktemp("lab")
    home = base / "km-home"
    env = clean_env(
        KERNEL_MAGICS_HOME=str(home),
        KERNEL_MAGICS_PROGRESS="none",
        # the test home's inference process is already running: kernels only attach to it
        KERNEL_MAGICS_AUTOSTART="0",
    )
    settings = load_settings(home=home)
    # The server boots (≈ 3 s) while the models train in this process.
    server = start_lab(base, env)
    try:
        _train_and_deploy(settings, server)
        yield LabSession(server, settings)
    finally:
        # independent processes, each a few seconds to stop cleanly: in parallel
        with ThreadPoolExecutor(2) as pool:
            stops = [pool.submit(server.stop), pool.submit(stop_inference_process, settings)]
            for stop in stops:
                stop.result()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: `make setup-system` installs Debian's chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        yield page
    finally:
        context.close()
