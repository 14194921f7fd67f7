"""A language model on the ray target, driven by the official ``openai`` client through Ray's
proxy: the gateway relays ``/v1/completions`` and ``/v1/chat/completions`` to the model's
replica, which streams the server-sent events back as the engine makes them. The greedy answer
is ``generate``'s, streamed and whole; 8 streams in flight through a deploy finish on the
version that started them while the next request gets the new one; rollback; ``NAME@V``; a
client gone mid-stream frees its slot; ``api.generate``; each request metered (``%monitor``'s
figures, Prometheus's series); and OpenAI's error shape for a bad request."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest
import requests
import torch
from kit.prometheus import series
from kit.ray_head import RayHead, ray_settings
from kit.streams import streams_through
from kit.tiny_lm import tiny_llama, train_tokenizer

from kernel_magics import api
from kernel_magics.config import Settings
from kernel_magics.display.rates import generation_rates

PROMPT = "The for statement is used to iterate over"


@pytest.fixture(scope="module")
def settings(km_home: Path, ray_head: RayHead) -> Settings:
    return ray_settings(km_home, ray_head)


@pytest.fixture(scope="module")
def lm() -> tuple[Any, Any]:
    return tiny_llama(), train_tokenizer()


@pytest.fixture(scope="module")
def oai(settings: Settings, lm: tuple[Any, Any]) -> openai.OpenAI:
    model, tokenizer = lm
    api.register(model, tokenizer=tokenizer, name="lm", settings=settings)
    api.register(tiny_llama(seed=1), tokenizer=tokenizer, name="lm", settings=settings)
    assert api.deploy("lm@1", settings=settings).version == 1
    base = f"http://127.0.0.1:{settings.port}/v1"
    return openai.OpenAI(base_url=base, api_key="ray-has-no-token", max_retries=0)


def test_greedy_answers_are_generates_streamed_and_whole(
    oai: openai.OpenAI, lm: tuple[Any, Any], settings: Settings
) -> None:
    model, tokenizer = lm
    ids = tokenizer(PROMPT)["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=None,
            pad_token_id=1,
        )  # fmt: skip
    expected = tokenizer.decode(out[0, len(ids) :])

    whole = oai.completions.create(model="lm", prompt=PROMPT, max_tokens=24, temperature=0)
    assert (whole.model, whole.choices[0].text) == ("lm@1", expected)
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(ids), 24)

    chunks = list(
        oai.completions.create(model="lm", prompt=PROMPT, max_tokens=24, temperature=0, stream=True)
    )
    assert len(chunks) > 2  # piece by piece, not one relayed answer
    assert "".join(c.choices[0].text for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.total_tokens == len(ids) + 24

    # two prompts, two completions of each, streamed: each choice's pieces by its index
    texts: dict[int, str] = {}
    for chunk in oai.completions.create(
        model="lm", prompt=[PROMPT, PROMPT], max_tokens=24, temperature=0, n=2, stream=True
    ):
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == dict.fromkeys(range(4), expected)

    # api.generate (and so %generate) streams from the same route, with no token on Ray
    pieces: list[str] = []
    gen = api.generate(
        "lm", PROMPT, max_tokens=24, temperature=0, on_text=pieces.append, settings=settings
    )
    assert (gen.model, gen.text, gen.completion_tokens) == ("lm@1", expected, 24)
    assert len(pieces) > 1
    # the replica's engine, as %serve status and the panel read it: the repeated prompt was
    # taken from its prefix cache
    before = api.server_status(settings=settings)
    assert before is not None
    engine = before.models["lm"].generation
    assert engine is not None
    assert engine.generated_tokens >= 3 * 24
    assert engine.prefix_hits >= 2

    chat = oai.chat.completions.create(
        model="lm", messages=[{"role": "user", "content": "Hello"}], max_tokens=8, temperature=0
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens == 8

    # each request metered as the built-in process meters it: %monitor's tokens/s and TTFT,
    # and the same series on the proxy's /metrics
    after = api.server_status(settings=settings)
    assert after is not None
    stats = after.models["lm"].stats
    assert stats is not None
    assert (stats.requests, stats.tokens) == (5, 7 * 24 + 8)
    assert stats.ttft_buckets[-1][1] == 5  # one first piece of text per request
    assert stats.inter_token_buckets[-1][1] > 0
    (rates,) = generation_rates(before, after, only="lm")
    assert rates.tokens_s  # the chat's 8 tokens over the window
    assert rates.ttft_p50_ms is not None
    scraped = requests.get(f"http://127.0.0.1:{settings.port}/metrics", timeout=30).text
    assert series(scraped, "km_generation_tokens_total", model="lm", version="1") == stats.tokens
    assert series(scraped, "km_generation_kv_cache_budget_tokens", model="lm", version="1") > 0


def test_a_deploy_under_streams_fails_none_and_rollback_returns(
    oai: openai.OpenAI, settings: Settings
) -> None:
    def open_stream() -> Any:
        return oai.completions.create(
            model="lm", prompt=PROMPT, max_tokens=150, temperature=0, stream=True
        )

    results, swap = streams_through(open_stream, 8, lambda: api.deploy("lm@2", settings=settings))
    after = oai.completions.create(model="lm", prompt=PROMPT, max_tokens=2)
    assert results == [("lm@1", "length")] * 8  # each finished on the version it started on
    assert (swap.version, after.model) == (2, "lm@2")

    assert api.rollback("lm", settings=settings).version == 1
    assert oai.completions.create(model="lm", prompt=PROMPT, max_tokens=2).model == "lm@1"
    # the version the rollback replaced stays loaded beside it: NAME@V reaches it
    assert oai.completions.create(model="lm@2", prompt=PROMPT, max_tokens=2).model == "lm@2"


def test_a_client_gone_mid_stream_frees_its_slot(oai: openai.OpenAI, settings: Settings) -> None:
    """Ray cancels the replica's stream when the proxy's client goes away: the sequence is
    dropped at the engine's next step, not run to its end."""

    def engine() -> Any:
        state = api.server_status(settings=settings).models["lm"].generation
        assert state is not None
        return state

    before = engine()
    chunks = oai.completions.create(
        model="lm", prompt=PROMPT, max_tokens=400, temperature=0, stream=True
    )
    next(iter(chunks))
    chunks.close()
    deadline = time.monotonic() + 30
    while engine().cancelled == before.cancelled and time.monotonic() < deadline:
        time.sleep(0.05)
    after = engine()
    assert after.cancelled == before.cancelled + 1
    assert after.running == 0
    assert after.generated_tokens - before.generated_tokens < 400


def test_bad_requests_get_openais_error_shape(oai: openai.OpenAI, settings: Settings) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        oai.completions.create(model="nope", prompt=PROMPT, max_tokens=2)
    assert missing.value.body["type"] == "not_found_error"
    assert "nope" in missing.value.body["message"]
    with pytest.raises(openai.NotFoundError, match="v9 is not served"):
        oai.completions.create(model="lm@9", prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="context"):
        oai.completions.create(model="lm", prompt=PROMPT, max_tokens=100_000)
    with pytest.raises(openai.BadRequestError, match="suffix is not supported"):
        oai.completions.create(model="lm", prompt=PROMPT, max_tokens=2, suffix="end")
    with pytest.raises(openai.BadRequestError, match="top_logprobs is for /v1/chat"):
        oai.completions.create(
            model="lm", prompt=PROMPT, max_tokens=2, extra_body={"top_logprobs": 2}
        )
    # the replica serves on after them, log-probabilities too (the same shapes as the worker's)
    served = oai.completions.create(
        model="lm", prompt=PROMPT, max_tokens=3, temperature=0, logprobs=2, echo=True
    )
    assert served.choices[0].text.startswith(PROMPT)
    prompt_tokens = served.usage.prompt_tokens
    assert len(served.choices[0].logprobs.top_logprobs) == prompt_tokens + 3
    assert served.choices[0].logprobs.token_logprobs[0] is None
    listing = requests.get(f"http://127.0.0.1:{settings.port}/v1/models", timeout=30).json()
    assert "lm" in [m["id"] for m in listing["data"]]
    assert "lm" in [m["name"] for m in listing["models"]]
