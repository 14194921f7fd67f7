"""Fault-recovery figures of kernel-magics' inference process (bench/reliability.md, linked from
docs/reliability.md).

    .venv/bin/python bench/reliability.py

In a throwaway KERNEL_MAGICS_HOME (deleted at the end) the benchmark MLP is registered twice as
``%train`` does (``bench/_model.py``), ``bench@1`` then ``bench@2`` deployed (v2 live), and then:

1. **worker SIGKILLed**: ``POST /v1/models/bench:predict`` is polled every 20 ms (0.5 s timeout,
   a fresh connection each) until it answers 200 again; one "patient" request (30 s timeout) is
   sent during the outage, and ``api.predict`` is called 0.1 s after the kill (how it fails);
2. **supervisor SIGKILLed**: its workers must exit by themselves (≤ 5 s); with the watchdog that
   ``%load_ext`` starts running, plain HTTP is polled (no call) until the process is back on the
   same URL;
3. **kernel restart**: a fresh interpreter runs ``from kernel_magics import api; api.predict(...)``
   and must reattach to the same process (same PIDs, no new history event);
4. **stop, then start from the store alone**: ``api.server_stop()``, ``api.server_start()``, time
   to the first 200.

Every answer counted as recovered must come from v2 (``X-Model-Version``) and equal v2's own
outputs. Loopback only, at most 90 s; every process started here is stopped by PID. Prints one
markdown table and writes it to ``bench/reliability.md``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))  # the private modules below, next to this script
sys.path.insert(0, str(ROOT))  # kernel_magics from the checkout

import numpy as np  # noqa: E402
from _http import post  # noqa: E402
from _log import log  # noqa: E402
from _model import N_IN, NAME, check_outputs, make_mlp, register_versions  # noqa: E402
from _procs import (  # noqa: E402
    forget,
    is_inference_process,
    private_home,
    spawn,
    stop_children,
    stop_pid,
)

BUDGET_S = 90
POLL_EVERY_S, POLL_TIMEOUT_S = 0.02, 0.5
PATH, JSON = f"/v1/models/{NAME}:predict", "application/json"
X = np.round(np.random.default_rng(3).standard_normal((1, N_IN)), 6).astype(np.float32)
BODY = json.dumps({"instances": X.tolist()}).encode()
HEADER = (
    "| fault | what happened | recovery time | requests failed in between | live version after "
    "| nothing lost |"
)
KERNEL = """import json, sys, time
t = time.perf_counter()
from kernel_magics import api
labels = api.predict("bench", json.loads(sys.argv[1]))
took = time.perf_counter() - t
from kernel_magics.config import load_settings
from kernel_magics.targets.local import LocalTarget
x = __import__("numpy").asarray(json.loads(sys.argv[1]), dtype="float32")
_, version = LocalTarget(load_settings()).predict("bench", x)
print(json.dumps({"s": took, "labels": labels.tolist(), "version": version}))
"""


class OutOfTime(Exception):
    pass


def _alarm(signum: int, frame: Any) -> None:
    raise OutOfTime(f"ran past its {BUDGET_S} s budget")


class Run:
    """The served model as a kernel (``api``) and as a plain HTTP client see it."""

    def __init__(self, settings: Any) -> None:
        from kernel_magics import api
        from kernel_magics.serving.process.pids import pid_alive
        from kernel_magics.store import Store

        self.api, self.s, self.alive, self.store = api, settings, pid_alive, Store(settings)
        self.v2 = make_mlp(1)  # seed 1 = v2: the outputs every recovered answer must equal
        self.seen: set[int] = set()  # every PID the state file ever named: stopped at the end
        self.token = ""
        self.port = 0  # the last port server.json named: probed when the file is gone

    def state(self) -> dict:
        try:
            state = json.loads(self.s.state_file.read_text())
        except (OSError, ValueError):
            return {}
        pids = [state.get("pid"), *state.get("workers", [])]
        self.seen |= {p for p in pids if isinstance(p, int)}
        return state

    def probe(self, timeout: float = POLL_TIMEOUT_S) -> tuple[str, int | None]:
        """One POST on a fresh connection: ('ok', version), or (why it failed, None)."""
        url = self.state().get("url")
        if url:
            self.port = int(url.rsplit(":", 1)[1])
        try:
            auth = {"Authorization": f"Bearer {self.token}"}
            status, headers, data = post(self.port, PATH, BODY, JSON, auth, timeout=timeout)
        except ConnectionRefusedError:
            return "refused", None
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            return "reset", None
        except TimeoutError:
            return "timeout", None
        except (OSError, http.client.HTTPException) as err:
            return type(err).__name__, None
        verdict = check_outputs(self.v2, X, status, headers, data)
        version = int(headers.get("x-model-version", 0))
        return ("ok" if verdict == "ok" and version == 2 else f"v{version}: {verdict}"), version

    def poll(self, limit: float) -> tuple[float | None, Counter]:
        """perf_counter() of the first right answer, and the failed polls by kind (short
        timeouts: a request the server queues counts as failed, as a client would see it)."""
        failed: Counter = Counter()
        deadline = time.perf_counter() + limit
        while time.perf_counter() < deadline:
            what, _ = self.probe()
            if what == "ok":
                return time.perf_counter(), failed
            failed[what] += 1
            time.sleep(POLL_EVERY_S)
        return None, failed

    def kernel_call(self) -> tuple[str, float]:
        """``api.predict`` once: ('answered', s) or ('Class: message', s)."""
        t = time.perf_counter()
        try:
            self.api.predict(NAME, X)
            return "answered", time.perf_counter() - t
        except OutOfTime:
            raise
        except Exception as err:
            return f"{type(err).__name__}: {err}", time.perf_counter() - t

    def history(self) -> int:
        return len(self.api.history(NAME))

    def live(self, version: int | None = None) -> str:
        """The version that answers (or ``version``) and the store's live alias."""
        version = version if version is not None else self.probe(timeout=5)[1]
        return f"v{version} (alias v{self.store.live_version(NAME)})"

    def wait_gone(self, pids: list[int], limit: float) -> float | None:
        t = time.perf_counter()
        while time.perf_counter() - t < limit:
            if not any(self.alive(p) for p in pids):
                return time.perf_counter() - t
            time.sleep(0.01)
        return None


def fmt_failed(failed: Counter) -> str:
    return ", ".join(f"{n} × {k}" for k, n in failed.most_common()) or "0"


def worker_killed(r: Run, hist: int) -> list[str]:
    state = r.state()
    old = state["workers"][0]
    r.api.predict(NAME, X)  # the kernel holds a keep-alive connection to the worker, as in use
    os.kill(old, signal.SIGKILL)
    t0 = time.perf_counter()
    r.wait_gone([old], 1.0)
    got: dict[str, Any] = {}  # a patient request (30 s timeout) and the 20 ms poller
    threads = [
        threading.Thread(target=lambda: got.update(patient=(r.probe(30), time.perf_counter()))),
        threading.Thread(target=lambda: got.update(poll=r.poll(30))),
    ]
    for t in threads:
        t.start()
    time.sleep(max(0.0, t0 + 0.1 - time.perf_counter()))
    status_then = r.state().get("status")
    call, call_s = r.kernel_call()
    for t in threads:
        t.join()
    first, failed = got["poll"]
    (what, _), answered = got["patient"]
    new_pid = r.state()["workers"][0]
    back = f"{first - t0:.2f} s" if first else "never (30 s)"
    log(f"worker: back in {back}; api.predict at +0.1 s: {call} ({call_s:.3f} s)")
    ok = first is not None and what == "ok" and new_pid != old and r.history() == hist
    return [
        "worker SIGKILLed",
        f"respawned (PID {old} → {new_pid}), v2 reloaded; supervisor {state['pid']} kept the "
        f"socket. A request sent during the outage waited {answered - t0:.2f} s → {what}. "
        f"`api.predict` at +0.1 s (state `{status_then}`): `{call}` in {call_s * 1000:.0f} ms",
        back,
        f"{fmt_failed(failed)} of {sum(failed.values()) + 1} polls ({POLL_TIMEOUT_S:g} s timeout"
        " each; none refused, reset or 5xx)"
        if set(failed) <= {"timeout"}
        else f"{fmt_failed(failed)} of {sum(failed.values()) + 1} polls",
        r.live(),
        "yes" if ok else "no",
    ]


def supervisor_killed(r: Run, hist: int) -> list[str]:
    """With the extension's watchdog running (as after ``%load_ext``, autostart on), no call is
    made: plain HTTP is polled until the restarted process answers on the same URL."""
    from kernel_magics.warmup import start_server, stop_watchdog

    start_server(r.s)
    state = r.state()
    sup, workers, url = state["pid"], list(state["workers"]), state["url"]
    try:
        os.kill(sup, signal.SIGKILL)
        t0 = time.perf_counter()
        gone = r.wait_gone(workers, 5.0)
        first, failed = r.poll(60)
    finally:
        stop_watchdog()
    new = r.state()
    back = f"{first - t0:.2f} s" if first else "never (60 s)"
    log(f"supervisor: workers gone after {gone} s; back in {back} at {new.get('url')}")
    ok = first is not None and new.get("pid") != sup and r.history() == hist
    workers_note = f"exited by themselves ≤ {gone:.2f} s after" if gone else "STILL ALIVE after 5 s"
    return [
        "supervisor SIGKILLed (kernel with the extension loaded, no call made)",
        f"workers {workers} {workers_note}; the kernel's watchdog (0.5 s) restarted the "
        f"process from the store (PID {sup} → {new.get('pid')}) on "
        + ("the same URL" if new.get("url") == url else f"a new URL {new.get('url')}"),
        back,
        f"{fmt_failed(failed)} of {sum(failed.values()) + 1} polls",
        r.live(),
        "yes" if ok else "no",
    ]


def kernel_restart(r: Run, hist: int) -> list[str]:
    before = r.state()
    pids = [before["pid"], *before["workers"]]
    import torch

    expected = r.v2(torch.from_numpy(X)).argmax(1).tolist()
    t0 = time.perf_counter()
    proc = spawn([sys.executable, "-c", KERNEL, json.dumps(X.tolist())], cwd=str(ROOT),
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    out, err = proc.communicate(timeout=30)
    forget(proc)
    wall = time.perf_counter() - t0
    try:
        got = json.loads(out.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise RuntimeError(f"the new kernel failed: {err.decode()[-600:]}") from None
    after = r.state()
    same = [after["pid"], *after["workers"]] == pids
    events = r.history() - hist
    ok = same and events == 0 and got["version"] == 2 and got["labels"] == expected
    log(f"kernel: {got['s']:.2f} s in-process, {wall:.2f} s wall; same PIDs {same}")
    return [
        "kernel restart (new interpreter)",
        f"reattached through server.json: same PIDs {pids}: {'yes' if same else 'NO'}; "
        f"{events} new history events; labels {'=' if got['labels'] == expected else '≠'} v2's",
        f"{got['s']:.2f} s import + `api.predict` ({wall:.2f} s with interpreter start)",
        "0",
        r.live(got["version"]),
        "yes" if ok else "no",
    ]


def stop_and_start(r: Run, hist: int) -> list[str]:
    state = r.state()
    pids = [state["pid"], *state["workers"]]
    t = time.perf_counter()
    stopped = r.api.server_stop()
    stop_s = time.perf_counter() - t
    left = [p for p in pids if r.alive(p)]
    down, _ = r.probe()
    t0 = time.perf_counter()
    r.api.server_start()
    start_s = time.perf_counter() - t0
    first, failed = r.poll(30)
    ok = first is not None and not left and r.history() == hist
    log(f"stop {stop_s:.2f} s; start {start_s:.2f} s; first 200: {first is not None}")
    return [
        "`server_stop()` then `server_start()`",
        f"stop returned {stopped} in {stop_s:.2f} s, PIDs left: {left or 'none'}, HTTP then: "
        f"{down}; start restored v2 from the store (new PID {r.state().get('pid')})",
        f"{first - t0:.2f} s (start {start_s:.2f} s + first 200)" if first else "never (30 s)",
        f"{fmt_failed(failed)} after `server_start` returned",
        r.live(),
        "yes" if ok else "no",
    ]


def clean_up(r: Run | None) -> None:
    """``api.server_stop``, then every PID the state file ever named, if still ours."""
    if r is not None:
        try:
            r.state()
            r.api.server_stop()
        except Exception as err:
            log(f"server_stop failed: {type(err).__name__}: {err}")
    stop_children()
    for pid in sorted(r.seen if r else set()):
        if is_inference_process(pid):
            log(f"PID {pid} still alive after server_stop; stopping it")
            stop_pid(pid)


def main() -> int:
    started = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(BUDGET_S)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: KeyboardInterrupt
    tmp, home = private_home("km-reliability-", KERNEL_MAGICS_AUTOSTART="0")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    rows: list[list[str]] = []
    notes: list[str] = []
    r: Run | None = None
    try:
        from kernel_magics.config import load_settings

        settings = load_settings()
        register_versions(settings)
        log(f"registered {NAME} v1, v2 in {home}")
        r = Run(settings)
        r.api.deploy(f"{NAME}@1")
        r.api.deploy(f"{NAME}@2")
        r.token = r.api.server_token()
        if r.poll(10)[0] is None:
            raise RuntimeError("v2 never answered right after its deploy")
        hist = r.history()
        for measure in (worker_killed, supervisor_killed, kernel_restart, stop_and_start):
            log(f"measuring: {measure.__name__}")
            rows.append(measure(r, hist))
    except OutOfTime as err:
        notes.append(f"Stopped: {err}; rows so far.")
    except KeyboardInterrupt:
        notes.append("Interrupted; rows so far.")
    except Exception as err:
        notes.append(f"FAILED: {type(err).__name__}: {err}")
        log(notes[-1])
        if r is not None:
            log("server.log tail:\n" + r.api.server_logs(15))
    finally:
        signal.alarm(0)
        clean_up(r)
        shutil.rmtree(tmp, ignore_errors=True)
    wall = time.monotonic() - started
    notes.append(
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, 1 worker (default), "
        f"loopback; polls every {POLL_EVERY_S * 1000:.0f} ms; whole run {wall:.1f} s wall."
    )
    lines = [HEADER, "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    text = "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print(text)
    (HERE / "reliability.md").write_text("# Reliability\n\n" + text)
    return 0 if len(rows) == 4 and all(row[-1] == "yes" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
