"""Cells queued behind a training, in a real kernel, the way JupyterLab sends them.

Run All (or Shift+Enter pressed twice) sends every ``execute_request`` at once; the kernel runs
them one after another. While ``%train`` runs, the training widget reads the main shell's
queue to deliver Stop clicks (``widgets/ui_events.py``) and holds every other message until the
cell ends. Papermill and nbval send one cell at a time and never exercise that, so these tests
drive a real ipykernel through ``jupyter_client``: every queued cell must get its reply, in the
order it was sent, with consecutive execution counts, whether the training ends by itself or by
a Stop click.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kit.kernel import DIGITS_SETUP, ipykernel

QUEUED = 4
SETUP = DIGITS_SETUP + "\nseen = []"


@pytest.fixture(scope="module")
def kernel(km_home: Path) -> Iterator[Any]:
    """One real ipykernel for the module, with the extension loaded and the digits in it."""
    # "widget" is what "auto" picks in a kernel with a front end: the reporter that polls
    with ipykernel(km_home, KERNEL_MAGICS_PROGRESS="auto") as client:
        replies = _run_queued(client, [SETUP])
        assert replies[0]["content"]["status"] == "ok", replies[0]["content"]
        yield client


def _run_queued(
    client: Any, cells: list[str], on_iopub: Any = None, timeout: float = 180
) -> list[dict[str, Any]]:
    """Send every cell at once (as Run All does) and collect one reply per cell, in the order
    the replies came. ``on_iopub(msg)`` sees the iopub messages meanwhile (to click Stop)."""
    while True:  # what earlier cells published is not this run's
        try:
            client.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            break
    sent = [client.execute(code) for code in cells]
    replies: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    deadline = time.monotonic() + timeout
    while len(replies) < len(sent):
        if time.monotonic() > deadline:
            missing = [i for i, m in enumerate(sent) if m not in replies]
            raise AssertionError(f"no reply for queued cells {missing} after {timeout:.0f} s")
        while on_iopub is not None:  # drain: a widget sends many updates a second
            try:
                on_iopub(client.get_iopub_msg(timeout=0.01))
            except queue.Empty:
                break
        try:
            reply = client.get_shell_msg(timeout=0.05)
        except queue.Empty:
            continue
        parent = reply["parent_header"].get("msg_id")
        if parent in sent and reply["msg_type"] == "execute_reply":
            replies[parent] = reply
            order.append(parent)
    assert order == sent, "replies came out of order"
    return [replies[m] for m in sent]


def _queued_cells(train: str) -> list[str]:
    return [train] + [f"seen.append({i})" for i in range(QUEUED)] + ["assert seen == [0,1,2,3]"]


def _assert_all_ran(replies: list[dict[str, Any]]) -> None:
    for reply in replies:
        assert reply["content"]["status"] == "ok", reply["content"]
    counts = [r["content"]["execution_count"] for r in replies]
    assert counts == list(range(counts[0], counts[0] + len(replies))), counts


def test_cells_queued_behind_train_all_run_in_order(kernel: Any) -> None:
    # long enough that the queued requests arrive while it trains and are held by the widget
    train = "%train nn.Sequential(nn.Linear(64, 10)) --data X y --epochs 5 --batch-size 16"
    cells = ["seen.clear()", *_queued_cells(train)]
    _assert_all_ran(_run_queued(kernel, cells))


def test_cells_queued_behind_a_stopped_train_all_run(kernel: Any) -> None:
    train = (
        "%train nn.Sequential(nn.Linear(64, 10)) --data X y --epochs 500 --batch-size 8 "
        "--name stopped"
    )
    stop = _StopClicker(kernel)
    replies = _run_queued(kernel, ["seen.clear()", *_queued_cells(train)], on_iopub=stop)
    assert stop.clicked, "the Stop button was never clicked"
    # Stop ends the training as an interrupt does: its cell fails (run KILLED), and the kernel
    # answers the cells queued behind it as aborted, as it does after any error (Run All stops
    # there). Every cell gets its reply, in order; none is left waiting.
    assert [r["content"]["status"] for r in replies] == ["ok", "error"] + ["aborted"] * (QUEUED + 1)
    assert replies[1]["content"]["ename"] == "TrainingStopped"
    after = _run_queued(kernel, ["seen.append('after')", "assert seen == ['after']"])
    assert [r["content"]["status"] for r in after] == ["ok", "ok"]  # the kernel goes on


class _StopClicker:
    """Clicks the training widget's Stop button (the comm message a front end sends) once the
    progress bar has moved, i.e. while the cell trains with the other cells queued behind it."""

    def __init__(self, client: Any) -> None:
        self.client, self.comm, self.clicked = client, None, False

    def __call__(self, msg: dict[str, Any]) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "comm_open" and content["data"]["state"].get("description") == "Stop":
            self.comm = content["comm_id"]  # the newest training widget's button
        elif (
            kind == "comm_msg"
            and self.comm
            and not self.clicked
            and content["data"].get("state", {}).get("value")
        ):
            click = {"method": "custom", "content": {"event": "click"}}
            message = self.client.session.msg("comm_msg", {"comm_id": self.comm, "data": click})
            self.client.shell_channel.send(message)
            self.clicked = True
