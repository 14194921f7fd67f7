"""kernel-magics' side: its inference process in the benchmark's home folder, the two cold
deploys, the answer checks, the load scenarios and the swap under load."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from _http import post, wait_200
from _load_tools import BATCH_JSON, BATCH_NPY, JSON, NPY, SINGLE_JSON, Endpoint, Loader
from _log import log
from _model import NAME, RequestBodies, check_outputs
from _procs import is_inference_process, stop_pid
from _swap import swap_under_load

# Status words taken as "workers up": the supervisor says "ready"; the others are accepted too.
READY_STATES = ("ready", "running", "ok", "serving", "idle", "up")


def _port_of(url: str) -> int:
    return int(url.rstrip("/").rsplit(":", 1)[1].split("/")[0])


def _wire(record: Any) -> dict:
    """A record of the core API as the JSON document it stands for ({} for None)."""
    return record.to_wire() if record is not None else {}


def _server_pids(status: dict | None) -> set[int]:
    """The supervisor's and workers' PIDs as far as the status answer tells them."""
    pids: set[int] = set()
    if not status:
        return pids
    if isinstance(status.get("pid"), int):
        pids.add(status["pid"])
    workers = status.get("workers")
    if isinstance(workers, list):
        for w in workers:
            if isinstance(w, dict) and isinstance(w.get("pid"), int):
                pids.add(w["pid"])
            elif isinstance(w, int):
                pids.add(w)
    return pids


def load_warm(answer: dict) -> dict:
    """``load_ms``/``warm_ms`` of a deploy answer: top level, or the slowest worker's when the
    answer lists workers (they load in parallel); None where the answer does not say."""
    out: dict[str, Any] = {}
    for key in ("load_ms", "warm_ms"):
        value = answer.get(key)
        if not isinstance(value, int | float):
            per = [
                w.get(key)
                for w in (answer.get("workers") or [])
                if isinstance(w, dict) and isinstance(w.get(key), int | float)
            ]
            value = max(per) if per else None
        out[key] = value
    return out


class WireAnswers:
    """``kernel_magics.api`` whose ``deploy`` and ``rollback`` answer with their records' JSON
    documents (what the HTTP control plane sends): the form the deploy timings and the swap
    summary (``_swap``) read. Everything else is the api itself."""

    def __init__(self, api: Any) -> None:
        self._api = api

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._api, attr)

    def deploy(self, ref: str, **kw: Any) -> dict:
        return _wire(self._api.deploy(ref, **kw))

    def rollback(self, name: str, **kw: Any) -> dict:
        return _wire(self._api.rollback(name, **kw))


class Ours:
    """kernel-magics' inference process in the benchmark's home folder.

    Every PID it reports is remembered, so that ``stop`` can make sure none outlives the run
    even if the product's own stop leaves one behind."""

    def __init__(self, settings: Any, name: str = NAME) -> None:
        from kernel_magics import api

        self.api = WireAnswers(api)
        self.s = settings
        self.name = name  # the registered model this run deploys and sends requests to
        self.pids: set[int] = set()
        self.token = ""

    def _remember_pids(self) -> None:
        with contextlib.suppress(Exception):
            self.pids |= _server_pids(_wire(self.api.server_status(settings=self.s)))

    def predict_path(self) -> str:
        return f"/v1/models/{self.name}:predict"

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def read_token(self) -> str:
        return str(self.api.server_token(settings=self.s))  # a file read

    def deploy_to_first_200(self, ref: str, body: bytes) -> dict:
        """``api.deploy(ref)``, then poll every 2 ms until ``:predict`` answers 200."""
        t0 = time.perf_counter()
        answer = self.api.deploy(ref, settings=self.s)
        t_call = time.perf_counter()
        port = _port_of(answer["url"])
        self.token = self.read_token()
        first = wait_200(
            port, self.predict_path(), body, JSON, self.auth(), timeout=30, interval=0.002
        )
        self._remember_pids()
        if first is None:
            raise RuntimeError(f"{ref} deployed but :predict never answered 200")
        return {
            "first_200_s": first - t0,
            "deploy_call_s": t_call - t0,
            **self.load_warm(answer),
            "port": port,
        }

    def load_warm(self, answer: dict) -> dict:
        """``load_warm(answer)``; a ``warm_ms`` the answer lacks is taken from the live model's
        description in the status (``GET /v1/models``), when it is the version just made live."""
        out = load_warm(answer)
        if out["warm_ms"] is None:
            with contextlib.suppress(Exception):
                status = _wire(self.api.server_status(settings=self.s))
                live = (status.get("models") or {}).get(self.name) or {}
                if str(live.get("version")) == str(answer.get("version")) and isinstance(
                    live.get("warm_ms"), int | float
                ):
                    out["warm_ms"] = live["warm_ms"]
                    out["warm_from"] = "status"
        return out

    def stop(self) -> None:
        self._remember_pids()
        with contextlib.suppress(Exception):
            self.api.server_stop(settings=self.s)
        for pid in sorted(self.pids):  # anything the product's stop left behind
            if is_inference_process(pid):
                log(f"ours: PID {pid} still alive after server_stop; stopping it")
                stop_pid(pid)
        self.pids.clear()

    def wait_idle_ready(self, timeout: float = 20.0) -> None:
        """After ``server_start``: wait until the status says ready (workers up), as after the
        pre-start that ``%load_ext`` does while the user is still writing the notebook."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st: dict = {}
            with contextlib.suppress(Exception):
                st = _wire(self.api.server_status(settings=self.s))
            state = str(st.get("status", "")).lower()
            if st and state in READY_STATES:
                self.pids |= _server_pids(st)
                return
            time.sleep(0.1)
        log("ours: the inference process did not report ready; measuring anyway")


def bench_ours(
    out: dict,
    settings: Any,
    bodies: RequestBodies,
    loader: Loader,
    tmp: Path,
    seconds: float,
    model: Any,
    swap_phase_s: float,
) -> None:
    """Cold deploys (a) and (b), the answer checks, the load scenarios, the swap under load.

    Fills ``out`` as it goes, so a run cut short keeps what it measured."""
    ours = Ours(settings)
    body1 = bodies.content["ours_1"]
    try:
        if ours.api.server_status(settings=settings):
            ours.stop()
        # (a) nothing running: deploy starts the process, loads, warms, serves.
        log("ours: (a) cold deploy with no inference process")
        out["cold_a"] = ours.deploy_to_first_200(f"{NAME}@1", body1)
        log(
            f"ours: (a) deploy → first 200 in {out['cold_a']['first_200_s']:.2f} s "
            f"(call {out['cold_a']['deploy_call_s']:.2f} s)"
        )
        # (b) process started ahead, as %load_ext does by default (autostart); model not loaded.
        ours.api.undeploy(NAME, settings=settings)
        ours.stop()
        log("ours: (b) pre-starting the inference process")
        ours.api.server_start(settings=settings)
        ours.wait_idle_ready()
        time.sleep(1.0)  # let the fresh processes settle, as a notebook's idle time would
        out["cold_b"] = ours.deploy_to_first_200(f"{NAME}@1", body1)
        port = out["cold_b"]["port"]
        log(
            f"ours: (b) deploy → first 200 in {out['cold_b']['first_200_s']:.3f} s "
            f"(call {out['cold_b']['deploy_call_s']:.3f} s)"
        )
        measure_served(out, ours, port, bodies, loader, seconds, model, "ours")
        out["swap"] = swap_under_load(ours, port, bodies.files["ours_1"], tmp, swap_phase_s)
        # nothing live in the store afterwards: a next target (--ray) starts from the same state
        ours.api.undeploy(NAME, settings=settings)
    finally:
        ours.stop()


def bench_ours_prestarted(
    out: dict,
    settings: Any,
    name: str,
    bodies: RequestBodies,
    loader: Loader,
    seconds: float,
    model: Any,
    who: str,
) -> None:
    """``name@1`` deployed into a freshly pre-started inference process (the default path,
    as deploy (b)), then ``measure_served``; ``who`` names the run in the log lines."""
    ours = Ours(settings, name)
    try:
        if ours.api.server_status(settings=settings):
            ours.stop()
        ours.api.server_start(settings=settings)
        ours.wait_idle_ready()
        out["deploy"] = ours.deploy_to_first_200(f"{name}@1", bodies.content["ours_1"])
        log(f"{who}: deploy → first 200 in {out['deploy']['first_200_s']:.3f} s")
        measure_served(out, ours, out["deploy"]["port"], bodies, loader, seconds, model, who)
    finally:
        ours.stop()


def measure_served(
    out: dict,
    ours: Ours,
    port: int,
    bodies: RequestBodies,
    loader: Loader,
    seconds: float,
    model: Any,
    who: str,
) -> None:
    """With ``ours.name`` live on ``port``: the 256-row answer checks (JSON and npy), then the
    1-row JSON, 256-row JSON and 256-row npy load scenarios after a discarded warm-up."""
    status = _wire(ours.api.server_status(settings=ours.s))
    out["server"] = {k: status.get(k) for k in ("workers", "status") if k in status}
    path = ours.predict_path()
    st, hdrs, data = post(port, path, bodies.content["ours_256"], JSON, ours.auth())
    out["check_json"] = check_outputs(model, bodies.rows_256, st, hdrs, data)
    st, hdrs, data = post(
        port, path, bodies.content["ours_npy"], NPY, {**ours.auth(), "Accept": NPY}
    )
    out["check_npy"] = check_outputs(model, bodies.rows_256, st, hdrs, data)
    log(f"{who}: 256-row answer check: JSON {out['check_json']}, npy {out['check_npy']}")
    target = Endpoint(port, path, ours.token)
    files = bodies.files
    loader.warm_up(target, SINGLE_JSON, files["ours_1"], seconds)
    out["single"] = loader.measure(who, target, SINGLE_JSON, files["ours_1"], seconds)
    out["batch_json"] = loader.measure(who, target, BATCH_JSON, files["ours_256"], seconds)
    out["batch_npy"] = loader.measure(who, target, BATCH_NPY, files["ours_npy"], seconds)
