"""The ``--ray`` part of the report: Ray Serve beside mlflow models serve and kernel-magics on
the same MLP and scenarios, with the ratio kernel-magics ÷ Ray Serve, and its notes.

Reads only the results dict (``results.json``'s ``ray``, ``ours``, ``mlflow``)."""

from __future__ import annotations

from typing import Any

RayRow = tuple[str, str, str, str, str]  # metric, mlflow, Ray Serve, kernel-magics, ours ÷ Ray
SWAP_CALLS = ("deploy", "rollback")


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _num(x: Any, spec: str = ".0f", unit: str = "") -> str:
    return "n/a" if x is None else f"{x:{spec}}{unit}"


def _ratio(a: Any, b: Any) -> str:
    ok = isinstance(a, int | float) and isinstance(b, int | float) and b
    return f"{a / b:.3g}×" if ok else "—"


def _figure(d: Any, scenario: str, key: str, spec: str, unit: str = "") -> tuple[str, Any]:
    value = _get(d, scenario, key)
    return _num(value, spec, unit), value


def _load_rows(m: dict, ray: dict, o: dict) -> list[RayRow]:
    rows: list[RayRow] = []
    for label, m_key, o_key, key, spec, unit in (
        ("1-row JSON, 16 conn: req/s", "single", "single", "req_s", ".0f", ""),
        ("1-row JSON, 16 conn: p50 latency", "single", "single", "p50_ms", ".2f", " ms"),
        ("1-row JSON, 16 conn: p99 latency", "single", "single", "p99_ms", ".2f", " ms"),
        ("256-row JSON, 4 conn: rows/s", "batch", "batch_json", "rows_s", ".0f", ""),
        ("256-row JSON, 4 conn: p99 latency", "batch", "batch_json", "p99_ms", ".1f", " ms"),
        ("256-row npy, 4 conn: rows/s", None, "batch_npy", "rows_s", ".0f", ""),
        ("256-row npy, 4 conn: p99 latency", None, "batch_npy", "p99_ms", ".1f", " ms"),
    ):
        m_text = _figure(m, m_key, key, spec, unit)[0] if m_key else "not supported"
        r_text, r_val = _figure(ray, o_key, key, spec, unit)
        o_text, o_val = _figure(o, o_key, key, spec, unit)
        rows.append((label, m_text, r_text, o_text, _ratio(o_val, r_val)))
    return rows


def _swap_text(sw: Any) -> tuple[str, str, str]:
    """failed of total; requests sent after each call answered by its version; call ms."""
    if not sw:
        return "n/a", "n/a", "n/a"
    failed = f"{sw.get('failed')} of {sw.get('responses')}"
    versions = ", ".join(
        "{} {}/{} v{}".format(
            k,
            (_get(sw, k, "sent_after") or 0) - (_get(sw, k, "stale_sent_after") or 0),
            _get(sw, k, "sent_after"),
            _get(sw, k, "to_version"),
        )
        for k in SWAP_CALLS
    )
    calls = " / ".join(_num(_get(sw, k, "call_ms"), ".0f", " ms") for k in SWAP_CALLS)
    return failed, versions, calls


def _swap_rows(ray: dict, o: dict) -> list[RayRow]:
    r_sw, o_sw = _get(ray, "swap"), _get(o, "swap")
    r_failed, r_versions, r_calls = _swap_text(r_sw)
    o_failed, o_versions, o_calls = _swap_text(o_sw)
    call_ratio = " / ".join(
        _ratio(_get(o_sw, k, "call_ms"), _get(r_sw, k, "call_ms")) for k in SWAP_CALLS
    )
    r_load, o_load = _get(r_sw, "load_p99_ms"), _get(o_sw, "load_p99_ms")
    return [
        (
            "swap under 1-row load (16 conn): failed requests",
            "restart (no service)",
            r_failed,
            o_failed,
            "—",
        ),
        (
            "swap: requests sent after the call returned, answered by the new version",
            "—",
            r_versions,
            o_versions,
            "—",
        ),
        ("swap: deploy / rollback call → returned", "—", r_calls, o_calls, call_ratio),
        # the swap recorder is bench/_load.py (one Python thread), not wrk
        (
            "swap: 1-row p99 during the swap window (Python recorder)",
            "—",
            _num(r_load, ".1f", " ms"),
            _num(o_load, ".1f", " ms"),
            _ratio(o_load, r_load),
        ),
    ]


def _deploy_row(m: dict, ray: dict, o: dict) -> RayRow:
    r_first, o_first = _get(ray, "deploy", "first_200_s"), _get(o, "cold_b", "first_200_s")
    return (
        "deploy v1 → first 200 OK (ours: into the pre-started process; Ray: onto the running "
        "head, Serve started by the call; mlflow: start → first 200)",
        _num(m.get("start_s"), ".2f", " s"),
        _num(r_first, ".2f", " s"),
        _num(o_first, ".3f", " s"),
        _ratio(o_first, r_first),
    )


def _notes(ray: dict) -> list[str]:
    s = ray.get("settings") or {}
    notes = [
        'Ray Serve 2.60 through kernel-magics\' `ray` target (`target="ray"`, `ray_address`, '
        f"`port` in the settings, as `%config` sets them): one local head (`--num-cpus "
        f"{s.get('head_num_cpus')}`, no dashboard) started in "
        f"{_num(ray.get('head_start_s'), '.1f', ' s')} and stopped in "
        f"{_num(ray.get('head_stop_s'), '.1f', ' s')}; {s.get('replicas')} model replica "
        f"(`@serve.batch` max {s.get('max_batch_size')} rows, {s.get('max_wait_ms')} ms), "
        "behind Ray's HTTP proxy and the gateway application (a request crosses 3 processes: "
        "the proxy actor, the gateway replica, the model replica; 1 worker process in the "
        "built-in one); the whole run in a loopback-only network namespace.",
    ]
    deploy = ray.get("deploy")
    if deploy:
        notes.append(
            f"Ray deploy: api.deploy returned after {deploy['deploy_call_s']:.2f} s (connect to "
            "the head, start Serve's controller and proxy, deploy the gateway application, then "
            f"the model's: {_num(deploy.get('load_ms'), '.0f', ' ms')} for the model's "
            "application from serve.run to every replica reporting v1 loaded and warm)."
        )
    checks = [
        f"{w} {ray[k]}" for k, w in (("check_json", "JSON"), ("check_npy", "npy")) if ray.get(k)
    ]
    if checks:
        notes.append(
            "Ray 256-row answers against the model's own outputs: " + ", ".join(checks) + "."
        )
    errors = [
        f"{k}: {_get(ray, k, 'errors')}"
        for k in ("single", "batch_json", "batch_npy")
        if (_get(ray, k, "errors") or 0) > 0
    ]
    if errors:
        notes.append("Ray load errors: " + ", ".join(errors) + ".")
    return notes


def ray_section(r: dict) -> str:
    """The markdown section for ``r["ray"]`` ("" when the run had no ``--ray``)."""
    ray = r.get("ray")
    if not ray:
        return ""
    m, o = r.get("mlflow") or {}, r.get("ours") or {}
    rows = _load_rows(m, ray, o) + _swap_rows(ray, o) + [_deploy_row(m, ray, o)]
    head = (
        "| metric (MLP, same run) | mlflow models serve | Ray Serve | kernel-magics "
        "| kernel-magics ÷ Ray Serve |\n|---|---|---|---|---|\n"
    )
    body = "".join(f"| {' | '.join(row)} |\n" for row in rows)
    notes = "".join(f"- {n}\n" for n in _notes(ray))
    return "### Ray Serve, side by side\n\n" + head + body + "\n" + notes
