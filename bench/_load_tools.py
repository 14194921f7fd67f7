"""Load generators: ``wrk`` (one thread, a Lua script) when it is on PATH, else the Python
client of ``bench/_load.py``; one bounded run at a time against one server."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import _load
from _http import HOST
from _log import log
from _model import BATCH_ROWS
from _procs import forget, spawn

JSON = "application/json"
NPY = "application/x-npy"


@dataclass(frozen=True)
class Endpoint:
    """Where a server under test answers predictions."""

    port: int
    path: str
    token: str = ""  # bearer token; "" sends no Authorization header


@dataclass(frozen=True)
class Scenario:
    """One load shape, run the same way against each server (only the body's format differs)."""

    label: str  # as the log lines name it
    content_type: str
    conns: int
    rows: int = 1  # rows per request, for rows/s
    accept: str = ""  # "" sends no Accept header


SINGLE_JSON = Scenario("1-row JSON, 16 conn", JSON, 16)
BATCH_JSON = Scenario("256-row JSON, 4 conn", JSON, 4, rows=BATCH_ROWS)
BATCH_NPY = Scenario("256-row npy, 4 conn", NPY, 4, rows=BATCH_ROWS, accept=NPY)

WRK_LUA = r"""
-- args: body file, content type, bearer token ("" for none), accept ("" for none)
function init(args)
  local f = assert(io.open(args[1], "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = args[2]
  if args[3] ~= nil and args[3] ~= "" then
    wrk.headers["Authorization"] = "Bearer " .. args[3]
  end
  if args[4] ~= nil and args[4] ~= "" then
    wrk.headers["Accept"] = args[4]
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "mean_us": %.1f, "p50_us": %d, ' ..
    '"p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


class Loader:
    """Runs one bounded load (wrk or the Python client) at a time against a server."""

    def __init__(self, tmp: Path, force_python: bool = False) -> None:
        self.wrk = None if force_python else shutil.which("wrk")
        self.script = tmp / "post.lua"
        self.script.write_text(WRK_LUA)

    @property
    def tool(self) -> str:
        return "wrk (1 thread)" if self.wrk else "python (bench/_load.py, 1 thread)"

    def warm_up(self, target: Endpoint, scenario: Scenario, body_file: str, seconds: float) -> None:
        """At most 1 s of ``scenario``, discarded: first requests pay one-off costs."""
        self.run(target, scenario, body_file, min(1.0, seconds))

    def measure(
        self, who: str, target: Endpoint, scenario: Scenario, body_file: str, seconds: float
    ) -> dict:
        """``run``, logged as ``who: <scenario>: <figures>``."""
        result = self.run(target, scenario, body_file, seconds)
        log(f"{who}: {scenario.label}: {fmt_load(result)}")
        return result

    def run(self, target: Endpoint, scenario: Scenario, body_file: str, seconds: float) -> dict:
        """req/s, errors and latency percentiles (ms) of one run, plus ``conns`` and ``rows_s``."""
        if self.wrk:
            result = self._wrk(target, scenario, body_file, seconds)
        else:
            headers = {"Authorization": f"Bearer {target.token}"} if target.token else {}
            if scenario.accept:
                headers["Accept"] = scenario.accept
            body = Path(body_file).read_bytes()
            result = _load.run(
                HOST,
                target.port,
                target.path,
                body,
                scenario.content_type,
                headers,
                scenario.conns,
                seconds,
            )
        result["conns"] = scenario.conns
        result["rows_s"] = result["req_s"] * scenario.rows
        return result

    def _wrk(self, target: Endpoint, scenario: Scenario, body_file: str, seconds: float) -> dict:
        cmd = [
            self.wrk,
            "-t1",
            f"-c{scenario.conns}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "5s",
            "-s",
            str(self.script),
            f"http://{HOST}:{target.port}{target.path}",
            "--",
            body_file,
            scenario.content_type,
            target.token,
            scenario.accept,
        ]
        proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=seconds + 30)
        finally:
            forget(proc)
        return parse_wrk(out)


def parse_wrk(out: str) -> dict:
    """The summary line that WRK_LUA's ``done`` prints, in the Python client's shape."""
    line = next((ln for ln in out.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary: {out[-500:]}")
    w = json.loads(line[len("WRK_JSON ") :])
    secs = w["duration_us"] / 1e6
    errors = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
    ok = w["requests"] - w["status"]  # wrk counts non-2xx/3xx answers among its requests
    return {
        "tool": "wrk",
        "requests": w["requests"],
        "seconds": secs,
        "req_s": ok / secs if secs else 0.0,
        "errors": errors,
        "p50_ms": w["p50_us"] / 1e3,
        "p99_ms": w["p99_us"] / 1e3,
        "mean_ms": w["mean_us"] / 1e3,
    }


def fmt_load(r: dict) -> str:
    return (
        f"{r['req_s']:.0f} req/s ({r['rows_s']:.0f} rows/s), p50 {r['p50_ms']:.1f} ms, "
        f"p99 {r['p99_ms']:.1f} ms, errors {r['errors']}"
    )
