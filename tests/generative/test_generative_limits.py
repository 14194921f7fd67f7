"""The limits of the generation plane over real HTTP, with one running sequence and one queued
(KERNEL_MAGICS_GEN_MAX_RUNNING=1, GEN_MAX_QUEUED=1): past the queue 429 with Retry-After in
OpenAI's error shape; a client that disconnects mid-stream frees its slot."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import openai
import pytest
import requests

from kernel_magics import api
from kernel_magics.targets.local import LocalTarget

PROMPT = "The for statement is used to iterate over"


@pytest.fixture(scope="module")
def km_home(km_home: Path) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERNEL_MAGICS_GEN_MAX_RUNNING", "1")
        mp.setenv("KERNEL_MAGICS_GEN_MAX_QUEUED", "1")
        yield km_home


@pytest.fixture(scope="module")
def served(client: LocalTarget, lm: Any, tokenizer: Any) -> str:
    api.register(lm, tokenizer=tokenizer, name="tiny")
    api.deploy("tiny")
    return "tiny"


def open_stream(client: LocalTarget, max_tokens: int) -> http.client.HTTPConnection:
    """A streaming request whose first event has arrived (so it holds the running slot)."""
    url = urlparse(client.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": max_tokens, "stream": True}
    headers = {"authorization": f"Bearer {client.token()}", "content-type": "application/json"}
    conn.request("POST", "/v1/completions", json.dumps(body), headers)
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.readline().startswith(b"data: ")  # chunked framing is undone by http.client
    return conn


def generation(client: LocalTarget, name: str = "tiny") -> dict:
    """The engine's counters of ``name`` (the process may serve other models too)."""
    doc = requests.get(f"{client.url}/v1/models", timeout=10).json()
    (model,) = [m for m in doc["models"] if m["name"] == name]
    return model["generation"]


def test_queue_full_is_429_with_retry_after(client: LocalTarget, served: str) -> None:
    # eight long requests at once: one runs, one waits, the others are refused at once
    refused: list[openai.RateLimitError] = []
    answered: list[int] = []

    def ask() -> None:
        oai = openai.OpenAI(base_url=f"{client.url}/v1", api_key=client.token(), max_retries=0)
        try:
            out = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=480)
            answered.append(out.usage.completion_tokens)
        except openai.RateLimitError as err:
            refused.append(err)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert refused
    assert answered
    assert len(refused) + len(answered) == 8
    assert refused[0].response.headers["retry-after"] == "1"
    assert refused[0].body["type"] == "rate_limit_error"
    assert "queued" in refused[0].body["message"]


def test_disconnect_frees_the_slot(client: LocalTarget, served: str) -> None:
    # what the queue test left running ends first: this stream must hold the running slot
    # (a request dropped while still queued is not a cancelled sequence)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        idle = generation(client)
        if idle["running"] == 0 and idle["queued"] == 0:
            break
        time.sleep(0.05)
    before = generation(client)
    open_stream(client, 480).close()
    deadline = time.monotonic() + 20
    while generation(client)["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    state = generation(client)
    assert state["running"] == 0
    assert state["kv_cache_reserved"] == 0
    assert state["cancelled"] == before["cancelled"] + 1  # dropped at a step, not run to its end
    assert state["generated_tokens"] - before["generated_tokens"] < 480
    oai = openai.OpenAI(base_url=f"{client.url}/v1", api_key=client.token(), max_retries=0)
    assert oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=3).usage
