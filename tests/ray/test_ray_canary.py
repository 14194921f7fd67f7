"""Canaries on Ray: the split rule of the built-in worker (``serving/request/canary.py``): exact
by the hash of ``X-Request-ID`` (Ray's proxy sets a random one when the client sends none);
promote makes the canary live, rollback drops it. Driven from the magics with ``%config``."""

from __future__ import annotations

import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from kit.ray_head import RayHead, url
from kit.serving import MLP, log_model, rows

from kernel_magics import api
from kernel_magics.config import Settings, load_settings

N, PERCENT = 200, 20


@pytest.fixture(scope="module")
def settings(ip: Any, km_home: Path, ray_head: RayHead) -> Settings:
    ip.run_line_magic("config", 'KernelMagics.target = "ray"')
    ip.run_line_magic("config", f'KernelMagics.ray_address = "{ray_head.address}"')
    ip.run_line_magic("config", f"KernelMagics.port = {ray_head.proxy_port}")
    s = load_settings(target="ray", ray_address=ray_head.address, port=ray_head.proxy_port)
    for seed in (1, 2, 3):
        log_model(s, "clf", MLP(seed=seed).eval(), rows(4, seed=seed))
    return s


def versions(settings: Settings, n: int, ids: list[str] | None = None) -> Counter:
    seen: Counter = Counter()
    session = requests.Session()
    body = {"instances": rows(1).tolist()}
    for i in range(n):
        headers = {"x-request-id": ids[i]} if ids else {}
        r = session.post(url(settings, "clf"), json=body, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        seen[int(r.headers["x-model-version"])] += 1
    return seen


def test_canary_split_promote_and_drop(ip: Any, settings: Settings):
    ip.run_line_magic("deploy", "clf@1")
    ip.run_line_magic("deploy", f"clf@2 --canary {PERCENT}")
    assert api.server_status(settings=settings).models["clf"].canary == {
        "version": 2,
        "percent": PERCENT,
    }

    # Ray's proxy gives every request an X-Request-ID (the client's, else a random uuid), so on
    # Ray the split always goes by its hash: without an id of its own a client gets P% on
    # average; stated tolerance: 5 binomial standard deviations
    seen = versions(settings, N)
    sd = (N * PERCENT / 100 * (1 - PERCENT / 100)) ** 0.5
    assert seen[1] + seen[2] == N
    assert abs(seen[2] - N * PERCENT / 100) <= 5 * sd
    # with an id: the canary answers exactly the ids whose crc32 % 100 < P
    ids = [f"req-{i}" for i in range(N)]
    to_canary = sum(zlib.crc32(i.encode()) % 100 < PERCENT for i in ids)
    assert versions(settings, N, ids) == Counter({2: to_canary, 1: N - to_canary})

    result = api.promote("clf", settings=settings)
    assert (result.action, result.version, result.previous_version) == ("promote", 2, 1)
    assert versions(settings, 20) == Counter({2: 20})

    api.deploy("clf@3", canary=50, settings=settings)
    ip.run_line_magic("rollback", "clf")  # while a canary runs: drop it
    assert versions(settings, 20) == Counter({2: 20})
    events = [
        (e.action, e.from_version, e.to_version) for e in api.history("clf", settings=settings)
    ]
    assert events == [
        ("deploy", None, 1),
        ("canary", 1, 2),
        ("promote", 1, 2),
        ("canary", 2, 3),
        ("canary-drop", 3, 2),
    ]
