"""The swap-under-load check: deploy v2, then roll back to v1, while ``bench/_load.py`` (a
subprocess) keeps 16 connections busy with 1-row requests and records every response."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _log import log
from _model import NAME
from _procs import forget, spawn, stop_pid

if TYPE_CHECKING:
    from _ours import Ours

HERE = Path(__file__).resolve().parent


def swap_under_load(
    ours: Ours, port: int, body_file: str, tmp: Path, phase_s: float, who: str = "ours"
) -> dict:
    """Deploy v2 then roll back to v1 while 16 connections send 1-row requests non-stop,
    ``phase_s`` apart; the recorded responses summarised by ``summarize``. ``who`` names the
    server in the log lines."""
    result_file = tmp / f"swap-{who}.json"
    cmd = [
        sys.executable,
        str(HERE / "_load.py"),
        "--port",
        str(port),
        "--path",
        ours.predict_path(),
        "--body-file",
        body_file,
        *(["--header", f"Authorization: Bearer {ours.token}"] if ours.token else []),
        "--conns",
        "16",
        "--max-seconds",
        str(6 * phase_s + 30),
        "--out",
        str(result_file),
    ]
    log(f"{who}: swap under load (deploy v2, then rollback to v1)")
    proc = spawn(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    calls: dict[str, Any] = {}
    try:
        assert proc.stdout is not None
        assert proc.stdin is not None
        proc.stdout.readline()  # "started"
        time.sleep(phase_s)
        for key, fn in (
            ("deploy", lambda: ours.api.deploy(f"{NAME}@2", settings=ours.s)),
            ("rollback", lambda: ours.api.rollback(NAME, settings=ours.s)),
        ):
            called = time.monotonic()
            answer = fn()
            returned = time.monotonic()
            returned_wall = time.time()  # same clock as the answer's ready_at (every process)
            calls[key] = {"called": called, "returned": returned, "answer": answer}
            ready_at = answer.get("ready_at")
            if isinstance(ready_at, int | float):
                calls[key]["after_ready_ms"] = (returned_wall - ready_at) * 1e3
            calls[key]["lw"] = ours.load_warm(answer)  # after the timing: one status request
            time.sleep(phase_s)
        proc.stdin.close()  # the recorder stops at EOF on its stdin
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            stop_pid(proc.pid, group=True)
        forget(proc)
    return summarize(json.loads(result_file.read_text()), calls, who)


def _version_of(answer: dict) -> str:
    return str(answer.get("version", "")).lstrip("v")


def summarize(rec: dict, calls: dict[str, Any], who: str = "ours") -> dict:
    """Failed requests over the whole window, and per call: which versions answered after it
    returned, and its duration against the version's load + warm.

    ``rec`` is what ``_load.py`` wrote: ``events`` are (sent, received, status, version), with
    ``time.monotonic()`` stamps comparable with the calls' (the same clock in every process)."""
    events = rec["events"]
    out: dict[str, Any] = {
        "responses": len(events),
        "failed": sum(1 for _, _, status, _ in events if status != 200),
        "load_p99_ms": rec.get("p99_ms"),
    }
    # each call's window: from its return to the next call (the last one: to the end)
    windows = {
        "deploy": (calls["deploy"]["returned"], calls["rollback"]["called"]),
        "rollback": (calls["rollback"]["returned"], float("inf")),
    }
    for key, call in calls.items():
        answer = call["answer"]
        want = _version_of(answer)
        lo, hi = windows[key]
        after = [(ts, t, v.lstrip("v")) for ts, t, st, v in events if lo < t < hi and st == 200]
        stale = [t - lo for _, t, v in after if v != want]
        # causal view: requests *sent* after the call returned (none was in flight at the swap)
        sent_after = [v for ts, _, v in after if ts > lo]
        lw = call["lw"]
        load_ms, warm_ms = lw["load_ms"], lw["warm_ms"]
        call_ms = (call["returned"] - call["called"]) * 1e3
        known = [x for x in (load_ms, warm_ms) if isinstance(x, int | float)]
        out[key] = {
            "to_version": want,
            "call_ms": call_ms,
            "load_ms": load_ms,
            "warm_ms": warm_ms,
            "overhead_ms": call_ms - sum(known) if known else None,
            # the goal as stated: from "loaded and warm in every worker" to "the call returned"
            "after_ready_ms": call.get("after_ready_ms"),
            "responses_after": len(after),
            "stale_after": len(stale),
            "stale_last_ms": max(stale) * 1e3 if stale else None,
            "versions_after": sorted({v for _, _, v in after}),
            "sent_after": len(sent_after),
            "stale_sent_after": sum(1 for v in sent_after if v != want),
        }
        o = out[key]
        log(
            f"{who}: {key} → v{want}: call {call_ms:.0f} ms (load {load_ms}, warm {warm_ms}), "
            f"{o['responses_after']} responses after it returned, {o['stale_after']} stale"
            + (f" (last {o['stale_last_ms']:.1f} ms after)" if o["stale_after"] else "")
        )
    log(f"{who}: swap window: {out['responses']} responses, {out['failed']} failed")
    return out
