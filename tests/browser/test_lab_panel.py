"""The JupyterLab side in a real browser: the Models panel shows the live version and rolls it
back, the change it made is what the inference process serves, the panel follows changes made
elsewhere, and ``%models`` renders its table in a notebook."""

from __future__ import annotations

import json
from pathlib import Path

import requests
from labkit import MODEL, LabSession, open_lab, save_screenshot, widen_left_area
from playwright.sync_api import Page, expect

from kernel_magics import api

PANEL = "#kernel-magics-models"
PANEL_TAB = '.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="kernel-magics-models"]'
CARD = f'.jp-KmModels-card[data-model="{MODEL}"]'
AUTO_REFRESH_MS = 5_000


def served_version(lab: LabSession) -> int:
    """The version the inference process answers with, asked over its own HTTP API."""
    status = api.server_status(settings=lab.settings)
    assert status is not None and status.url
    token = api.server_token(settings=lab.settings)
    answer = requests.get(
        f"{status.url.rstrip('/')}/v1/models/{MODEL}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    answer.raise_for_status()
    return int(answer.json()["version"])


def test_models_panel_rolls_back_and_follows_changes(
    lab: LabSession, page: Page, tmp_path: Path
) -> None:
    open_lab(page, lab.server, "panel")
    expect(page.locator(PANEL_TAB)).to_be_visible()  # the sidebar icon

    # opened the way a user finds it: the command palette
    page.keyboard.press("Control+Shift+C")
    page.keyboard.insert_text("Open Models panel")
    page.keyboard.press("Enter")

    card = page.locator(CARD)
    live = card.locator(".jp-KmModels-liveVersion")
    expect(live).to_have_text("live v2")
    expect(card.locator("tr[data-version]")).to_have_count(2)
    expect(page.locator(".jp-KmModels-health")).to_contain_text("ready")
    expect(card.locator(".jp-KmModels-events li").first).to_contain_text("deploy v1 → v2")
    save_screenshot(page, tmp_path, "panel-before-rollback")

    card.locator('button[data-action="rollback"]').click()
    expect(live).to_have_text("live v1")
    expect(page.locator(".jp-KmModels-notice")).to_contain_text(f"{MODEL}: rollback v2 → v1")
    expect(page.locator(".jp-KmModels-error")).to_be_hidden()
    assert served_version(lab) == 1
    widen_left_area(page, page.locator(PANEL), 420)
    save_screenshot(page, tmp_path, "lab-with-models-panel")
    save_screenshot(page, tmp_path, "models-panel", publish=True, only=page.locator(PANEL))

    # a deploy made elsewhere (a notebook, the CLI) shows up on the next refresh, no click
    api.deploy(MODEL, 2, settings=lab.settings)
    expect(live).to_have_text("live v2", timeout=AUTO_REFRESH_MS + 5_000)
    assert served_version(lab) == 2


def test_models_panel_shows_a_failed_action_as_one_line(lab: LabSession, page: Page) -> None:
    open_lab(page, lab.server, "errors")
    page.locator(PANEL_TAB).click()
    card = page.locator(CARD)
    expect(card.locator(".jp-KmModels-liveVersion")).to_have_text("live v2")
    # the picker offers registered versions only: ask for one that is not
    card.locator("select.jp-KmModels-picker").evaluate(
        "select => { select.add(new Option('v99', '99')); select.value = '99'; }"
    )
    card.locator('button[data-action="deploy"]').click()
    error = page.locator(".jp-KmModels-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("404")
    assert "\n" not in error.inner_text()
    expect(card.locator(".jp-KmModels-liveVersion")).to_have_text("live v2")


def test_models_magic_renders_its_table_in_a_notebook(
    lab: LabSession, page: Page, tmp_path: Path
) -> None:
    cell = {
        "cell_type": "code",
        "execution_count": None,
        "metadata": {},
        "outputs": [],
        "source": "%load_ext kernel_magics\n%models",
    }
    notebook = {
        "cells": [cell],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (lab.server.root / "models.ipynb").write_text(json.dumps(notebook))

    open_lab(page, lab.server, "notebook", "models.ipynb")
    # Shift+Enter before the kernel is connected gets lost: wait for an idle, connected kernel
    page.wait_for_function(
        """() => {
            const kernel = window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel;
            return kernel?.connectionStatus === 'connected' && kernel?.status === 'idle';
        }""",
        timeout=60_000,
    )
    page.locator(".jp-Notebook .jp-Cell .jp-InputArea-editor").first.click()
    page.keyboard.press("Shift+Enter")

    table = page.locator(".jp-OutputArea-output table")
    expect(table).to_contain_text(MODEL, timeout=60_000)
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table).to_contain_text("LIVE")
    save_screenshot(page, tmp_path, "models-magic")
