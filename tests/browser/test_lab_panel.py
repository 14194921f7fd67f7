"""The JupyterLab side in a real browser: the Models panel shows the live version and rolls it
back, the change it made is what the inference process serves, the panel follows changes made
elsewhere, and ``%models`` renders its table in a notebook. Then the panel's REST routes over
plain HTTP: what they answer, their one-line JSON errors, the token they need.

One module on purpose: its fixtures (a trained store, ``jupyter lab``, Chromium) are
module-scoped, so they stop as soon as these tests end, not at the end of ``make test``."""

from __future__ import annotations

import json
from pathlib import Path

import requests
from kit.lab import (
    MODEL,
    LabSession,
    open_lab,
    open_notebook,
    save_screenshot,
    widen_left_area,
)
from playwright.sync_api import Page, expect

from kernel_magics import api

PANEL = "#kernel-magics-models"
PANEL_TAB = '.jp-SideBar.jp-mod-left li.lm-TabBar-tab[data-id="kernel-magics-models"]'
CARD = f'.jp-KmModels-card[data-model="{MODEL}"]'
AUTO_REFRESH_MS = 5_000
ROUTES = "kernel-magics"  # the REST routes' prefix under the server's base URL


def served_version(lab: LabSession) -> int:
    """The version the inference process answers with, asked over its own HTTP API."""
    status = api.server_status(settings=lab.settings)
    assert status is not None
    assert status.url
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

    # the sidebar is narrow: one metric column (the headline), every metric in the tooltip
    headers = card.locator("thead th").all_inner_texts()
    assert headers == ["version", "created", "accuracy"], headers
    assert "f1_macro" in (card.locator("tr[data-version]").first.get_attribute("title") or "")

    # changing what is live is asked once more: Cancel leaves it as it was
    card.locator('button[data-action="rollback"]').click()
    dialog = page.locator(".jp-Dialog")
    expect(dialog).to_contain_text(f"Roll {MODEL} back")
    dialog.locator(".jp-mod-reject").click()
    expect(dialog).to_have_count(0)
    assert served_version(lab) == 2
    expect(live).to_have_text("live v2")

    # accepted: the card shows the action's answer at once, with the store unreachable for
    # the panel meanwhile (its refreshes fail), so nothing but the answer can have updated it
    card.locator('button[data-action="rollback"]').click()
    page.route("**/kernel-magics/models*", lambda route: route.abort())
    page.locator(".jp-Dialog .jp-mod-accept").click()
    expect(live).to_have_text("live v1")
    expect(card.locator(".jp-KmModels-events li").first).to_contain_text("rollback v2 → v1")
    expect(page.locator(".jp-KmModels-notice")).to_contain_text(f"{MODEL}: rollback v2 → v1")
    page.unroute("**/kernel-magics/models*")
    page.locator(".jp-KmModels-refresh").click()
    expect(page.locator(".jp-KmModels-error")).to_be_hidden()
    expect(live).to_have_text("live v1")
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
    page.locator(".jp-Dialog .jp-mod-accept").click()
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
        "source": "%load_ext kernel_magics\n%models --static",  # the table, not the browser
    }
    notebook = {
        "cells": [cell],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    (lab.server.root / "models.ipynb").write_text(json.dumps(notebook))
    open_notebook(page, lab.server, "notebook", "models.ipynb")
    page.locator(".jp-Notebook .jp-Cell .jp-InputArea-editor").first.click()
    page.keyboard.press("Shift+Enter")

    table = page.locator(".jp-OutputArea-output table")
    expect(table).to_contain_text(MODEL, timeout=60_000)
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table).to_contain_text("LIVE")
    save_screenshot(page, tmp_path, "models-magic")


# -- the REST routes over plain HTTP ----------------------------------------------------------
def test_models_status_and_history_answer_what_the_api_returns(lab: LabSession) -> None:
    models = lab.server.request("GET", f"{ROUTES}/models").json()["models"]
    (digits,) = [m for m in models if m["name"] == MODEL]
    assert [v["version"] for v in digits["versions"]] == [1, 2]
    assert digits["live_version"] == digits["served_version"]
    assert set(digits["versions"][0]["key_metrics"]) == {"accuracy", "f1_macro"}

    status = lab.server.request("GET", f"{ROUTES}/status").json()["status"]
    assert status["status"] == "ready"
    assert status["models"][MODEL]["version"] == digits["live_version"]

    history = lab.server.request("GET", f"{ROUTES}/history/{MODEL}").json()["history"]
    expected = [e.to_wire() for e in api.history(MODEL, settings=lab.settings)]
    assert history == expected
    assert history[0]["action"] == "deploy"


def served_models(lab: LabSession) -> dict[str, int]:
    status = api.server_status(settings=lab.settings)
    assert status is not None
    return {name: state.version for name, state in status.models.items()}


def test_undeploy_then_deploy_a_version_change_what_is_served(lab: LabSession) -> None:
    other = 1 if served_models(lab)[MODEL] == 2 else 2

    answer = lab.server.request("POST", f"{ROUTES}/models/{MODEL}/undeploy")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["action"], answer.json()["version"]) == ("undeploy", None)
    assert MODEL not in served_models(lab)

    answer = lab.server.request("POST", f"{ROUTES}/models/{MODEL}/deploy", json={"version": other})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["action"], answer.json()["version"]) == ("deploy", other)
    assert served_models(lab)[MODEL] == other


def test_errors_are_one_json_line_with_the_error_class_status(lab: LabSession) -> None:
    cases = [
        ("POST", f"{ROUTES}/models/nope/deploy", {"json": {}}, 404, "no registered model"),
        ("POST", f"{ROUTES}/models/{MODEL}/deploy", {"json": {"version": 99}}, 404, "99"),
        ("POST", f"{ROUTES}/models/{MODEL}/rollback", {"json": {"to": "one"}}, 400, "'to'"),
        ("POST", f"{ROUTES}/models/{MODEL}/deploy", {"data": "[1"}, 400, "JSON"),
        ("POST", f"{ROUTES}/models/.hidden/undeploy", {}, 400, "invalid model name"),
        ("GET", f"{ROUTES}/history/.hidden", {}, 400, "invalid model name"),
    ]
    for method, path, body, status, words in cases:
        answer = lab.server.request(method, path, **body)
        assert answer.status_code == status, (path, answer.text)
        error = answer.json()["error"]
        assert words in error, (path, error)
        assert "\n" not in error, (path, error)


def test_every_route_needs_the_token(lab: LabSession) -> None:
    for method, path in [
        ("GET", "models"),
        ("GET", "status"),
        ("GET", f"history/{MODEL}"),
        ("POST", f"models/{MODEL}/rollback"),
    ]:
        answer = requests.request(method, f"{lab.server.url}{ROUTES}/{path}", timeout=30)
        assert answer.status_code == 403, (path, answer.status_code)
        assert answer.json()["error"]
