"""A language model through the whole lifecycle: %register (objects and a folder), %deploy to the
real inference process, then the official ``openai`` client over real HTTP (sync, streaming,
16 concurrent async streams), OpenAI-shaped errors, seeds, stop strings, %generate, and a
deploy while streams run."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import mlflow
import openai
import pytest
import requests
from kit.streams import streams_through

from kernel_magics import api
from kernel_magics.config import load_settings
from kernel_magics.generative.mlflow_flavor import TAG_MLFLOW_TRANSFORMERS
from kernel_magics.store import Store
from kernel_magics.targets.local import LocalTarget

PROMPT = "The for statement is used to iterate over"


@pytest.fixture(scope="module")
def served(ip: Any, client: LocalTarget, lm: Any, tokenizer: Any, lm_folder: Path) -> str:
    ip.user_ns.update(lm=lm, tok=tokenizer)
    v1 = ip.run_line_magic("register", "lm --tokenizer tok --name tiny")
    v2 = ip.run_line_magic("register", f"{lm_folder} --name tiny")
    assert (v1.version, v2.version, v1.format) == (1, 2, "transformers")
    api.deploy("tiny@1")
    return "tiny"


@pytest.fixture(scope="module")
def oai(client: LocalTarget, served: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{client.url}/v1", api_key=client.token(), max_retries=0)


def test_completion_and_chat(oai: openai.OpenAI) -> None:
    out = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=12, temperature=0)
    assert out.model == "tiny@1"
    assert out.object == "text_completion"
    assert out.usage.completion_tokens == 12
    assert out.usage.prompt_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + 12
    assert out.choices[0].finish_reason == "length"
    assert out.choices[0].text
    chat = oai.chat.completions.create(
        model="tiny@1", messages=[{"role": "user", "content": "Hello"}], max_tokens=5
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage.completion_tokens == 5


def test_a_chat_without_max_tokens_may_use_the_rest_of_the_context(
    oai: openai.OpenAI, tokenizer: Any
) -> None:
    """OpenAI's chat has no 16-token default: an answer runs to its end (here, with the end
    of text banned, to the context's 512 tokens); completions keep their default of 16."""
    no_end = {str(tokenizer.eos_token_id): -100}
    chat = oai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], logit_bias=no_end
    )
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage.total_tokens == 512
    out = oai.completions.create(model="tiny", prompt=PROMPT, logit_bias=no_end)
    assert out.usage.completion_tokens == 16


def test_stream_matches_the_whole_answer(oai: openai.OpenAI) -> None:
    whole = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=30, temperature=0)
    chunks = list(
        oai.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=30, temperature=0, stream=True
        )
    )
    assert len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == 30
    chat = list(
        oai.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True
        )
    )
    assert chat[0].choices[0].delta.role == "assistant"
    assert chat[-1].usage.completion_tokens == 8


def test_several_prompts_and_n_choices_each(oai: openai.OpenAI, tokenizer: Any) -> None:
    prompts = [PROMPT, "A class definition"]
    whole = oai.completions.create(model="tiny", prompt=prompts, max_tokens=12, temperature=0, n=2)
    assert [c.index for c in whole.choices] == [0, 1, 2, 3]  # prompt i // n's copies
    # greedy, side by side in the batch: each choice says what its prompt says alone
    alone = [
        oai.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0).choices[0].text
        for p in prompts
    ]
    assert [c.text for c in whole.choices] == [alone[0], alone[0], alone[1], alone[1]]
    assert whole.usage.prompt_tokens == sum(len(tokenizer(p)["input_ids"]) for p in prompts)
    assert whole.usage.completion_tokens == 4 * 12
    # token ids, as evaluation harnesses send them: the same answer as the text
    ids = tokenizer(PROMPT)["input_ids"]
    by_ids = oai.completions.create(model="tiny", prompt=ids, max_tokens=12, temperature=0)
    assert (by_ids.choices[0].text, by_ids.usage.prompt_tokens) == (alone[0], len(ids))
    both = oai.completions.create(model="tiny", prompt=[ids, ids], max_tokens=12, temperature=0)
    assert [c.text for c in both.choices] == [alone[0]] * 2
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        oai.completions.create(model="tiny", prompt=[5, 10_000_000], max_tokens=2)

    chunks = list(
        oai.completions.create(
            model="tiny", prompt=prompts, max_tokens=12, temperature=0, n=2, stream=True
        )
    )
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert [texts[i] for i in range(4)] == [c.text for c in whole.choices]
    ends = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert ends == ["length"] * 4
    assert chunks[-1].usage.completion_tokens == 4 * 12

    def sampled() -> list[str]:
        answer = oai.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=12, temperature=1.0, seed=7, n=3
        )
        return [c.text for c in answer.choices]

    first = sampled()
    assert len(set(first)) > 1  # copy j samples with seed + j
    assert sampled() == first

    chat = oai.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=6,
        temperature=0, n=2,
    )  # fmt: skip
    assert [c.message.content for c in chat.choices] == [chat.choices[0].message.content] * 2
    with pytest.raises(openai.BadRequestError, match="over 16 choices"):
        oai.completions.create(model="tiny", prompt=prompts, n=9)
    with pytest.raises(openai.BadRequestError, match="n must be a positive integer"):
        oai.completions.create(model="tiny", prompt=PROMPT, n=0)


def test_stream_ends_with_done(client: LocalTarget, served: str) -> None:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 4, "stream": True}
    headers = {"authorization": f"Bearer {client.token()}"}
    r = requests.post(f"{client.url}/v1/completions", json=body, headers=headers, timeout=30)
    assert r.headers["content-type"] == "text/event-stream"
    events = [line for line in r.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"


def test_a_streams_head_comes_with_its_first_event(client: LocalTarget, served: str) -> None:
    """One write: the client's first read of a stream has the head and the first token's event
    (a client reading many streams on one core pays per read)."""
    import json
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(client.url)
    body = json.dumps({"model": "tiny", "prompt": PROMPT, "max_tokens": 4, "stream": True})
    request = (
        f"POST /v1/completions HTTP/1.1\r\nhost: {url.netloc}\r\n"
        f"authorization: Bearer {client.token()}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}"
    ).encode()
    with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
        sock.sendall(request)
        first = sock.recv(65536)
        rest = b"".join(iter(lambda: sock.recv(65536), b""))
    assert first.startswith(b"HTTP/1.1 200"), first[:80]
    assert b"\r\n\r\n" in first
    assert b"data: {" in first.split(b"\r\n\r\n", 1)[1]  # the first token's event
    assert (first + rest).endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


def test_seed_and_stop(oai: openai.OpenAI) -> None:
    def sample(seed: int, **kw: Any) -> str:
        out = oai.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=20, temperature=1.0, seed=seed, **kw
        )
        return out.choices[0].text

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
    text = sample(3)
    stop = text[8:10]
    cut = oai.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=20, temperature=1.0, seed=3, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_logprobs_in_openai_shapes(oai: openai.OpenAI) -> None:
    ask = {"model": "tiny", "prompt": PROMPT, "max_tokens": 10, "temperature": 0}
    whole = oai.completions.create(**ask, logprobs=3)
    choice = whole.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 10
    assert "".join(lp.tokens) == choice.text
    assert all(
        choice.text[o : o + len(t)] == t for o, t in zip(lp.text_offset, lp.tokens, strict=True)
    )
    for logprob, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 1 <= len(top) <= 3  # fewer where two tokens decode to the same text
        assert logprob <= 0
        # greedy: the chosen token is the most likely one
        assert logprob == pytest.approx(max(top.values()))
    # streamed: each chunk carries its tokens; together they are the whole answer's
    chunks = list(oai.completions.create(**ask, logprobs=3, stream=True))
    parts = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [t for p in parts for t in p.tokens] == lp.tokens
    assert [x for p in parts for x in p.token_logprobs] == pytest.approx(lp.token_logprobs)
    assert [x for p in parts for x in p.text_offset] == lp.text_offset
    # logprobs=0: the chosen tokens' only
    bare = oai.completions.create(**ask, logprobs=0).choices[0].logprobs
    assert [list(top.values()) for top in bare.top_logprobs] == [
        [pytest.approx(x)] for x in lp.token_logprobs
    ]
    assert bare.token_logprobs == pytest.approx(lp.token_logprobs)
    # chat: logprobs true and top_logprobs
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 6}
    answer = oai.chat.completions.create(**chat, temperature=0, logprobs=True, top_logprobs=2)
    content = answer.choices[0].logprobs.content
    assert len(content) == 6
    assert "".join(e.token for e in content) == answer.choices[0].message.content
    for entry in content:
        assert entry.bytes == list(entry.token.encode())
        assert [t.logprob for t in entry.top_logprobs] == sorted(
            (t.logprob for t in entry.top_logprobs), reverse=True
        )
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    streamed = oai.chat.completions.create(
        **chat, temperature=0, logprobs=True, top_logprobs=2, stream=True
    )
    tokens = [e.token for c in streamed if c.choices and c.choices[0].logprobs
              for e in c.choices[0].logprobs.content]  # fmt: skip
    assert tokens == [e.token for e in content]
    assert oai.chat.completions.create(**chat).choices[0].logprobs is None  # not asked: none


def test_echo_scores_a_prompt_as_evaluation_harnesses_ask(
    oai: openai.OpenAI, lm: Any, tokenizer: Any
) -> None:
    """lm-eval's log-likelihood request: token ids, echo, logprobs=1, one new token."""
    import torch

    ids = tokenizer(PROMPT)["input_ids"]
    with torch.inference_mode():
        table = torch.log_softmax(lm(torch.tensor([ids])).logits[0, :-1].float(), -1)
    expected = table.gather(1, torch.tensor(ids[1:])[:, None])[:, 0].tolist()
    ask = {"model": "tiny", "prompt": ids, "max_tokens": 1, "temperature": 0}
    out = oai.completions.create(**ask, echo=True, logprobs=1)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(ids) + 1
    assert lp.token_logprobs[0] is None
    assert lp.top_logprobs[0] is None
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(expected, abs=1e-3)
    assert out.choices[0].text.startswith(tokenizer.decode(ids, skip_special_tokens=True))
    assert out.usage.prompt_tokens == len(ids)
    assert out.usage.completion_tokens == 1
    # echo alone: the prompt's text, then the completion's; streamed, the same text
    plain = oai.completions.create(**ask | {"max_tokens": 5}).choices[0].text
    echoed = oai.completions.create(**ask | {"max_tokens": 5}, echo=True).choices[0].text
    assert echoed == tokenizer.decode(ids, skip_special_tokens=True) + plain
    chunks = oai.completions.create(**ask | {"max_tokens": 5}, echo=True, stream=True)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == echoed
    with pytest.raises(openai.BadRequestError, match="echo is for /v1/completions"):
        oai.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], extra_body={"echo": True}
        )


def test_logprobs_tokens_are_the_texts_pieces(oai: openai.OpenAI) -> None:
    """Characters of several bytes split over tokens: each token's text is what it adds to the
    answer (a split character comes out whole with its last token), so the tokens put together
    are the text and each offset points at its token."""
    prompt = "Les cafés naïfs: 日本語 über alles"
    out = oai.completions.create(
        model="tiny", prompt=prompt, max_tokens=12, temperature=0, echo=True, logprobs=1
    )
    text, lp = out.choices[0].text, out.choices[0].logprobs
    assert text.startswith(prompt)
    assert "".join(lp.tokens) == text
    assert all(text[o : o + len(t)] == t for o, t in zip(lp.text_offset, lp.tokens, strict=True))
    assert "" in lp.tokens  # a token that only starts a character adds no text yet


def test_logit_bias_steers_the_tokens(oai: openai.OpenAI, lm: Any, tokenizer: Any) -> None:
    """Which token was chosen, told by its log-probability (the model's own, bias or not)
    against one forward of the same weights here."""
    import torch

    ids = tokenizer(PROMPT)["input_ids"]
    with torch.inference_mode():
        table = torch.log_softmax(lm(torch.tensor([ids])).logits[0, -1].float(), -1)
    ranked = table.argsort(descending=True).tolist()
    ask = {"model": "tiny", "prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 1}

    def chosen(**bias: Any) -> tuple[float, dict[str, float]]:
        lp = oai.completions.create(**ask, **bias).choices[0].logprobs
        return lp.token_logprobs[0], lp.top_logprobs[0]

    assert chosen()[0] == pytest.approx(float(table[ranked[0]]), abs=1e-4)
    # the most likely token pushed out: the next most likely is chosen
    out, _ = chosen(logit_bias={str(ranked[0]): -100})
    assert out == pytest.approx(float(table[ranked[1]]), abs=1e-4)
    # the least likely pulled up: chosen, and in top_logprobs beside the most likely (OpenAI's
    # legacy top_logprobs hold the chosen token too)
    out, top = chosen(logit_bias={str(ranked[-1]): 100})
    assert out == pytest.approx(float(table[ranked[-1]]), abs=1e-4)
    assert sorted(top.values()) == pytest.approx(
        sorted([float(table[ranked[-1]]), float(table[ranked[0]])]), abs=1e-4
    )


def test_bad_input_is_400_in_openai_shape(oai: openai.OpenAI, client: LocalTarget) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=600)
    message = err.value.body["message"]
    assert "max_tokens (600)" in message
    assert "context length of 512" in message
    assert err.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="temperature"):
        oai.completions.create(model="tiny", prompt=PROMPT, temperature=5)
    with pytest.raises(openai.NotFoundError, match="nope"):
        oai.completions.create(model="nope", prompt=PROMPT)
    # what this server does not implement is refused by name, not answered without it
    with pytest.raises(openai.BadRequestError, match="suffix is not supported"):
        oai.completions.create(model="tiny", prompt=PROMPT, suffix="end")
    with pytest.raises(openai.BadRequestError, match="frequency_penalty must be between -2"):
        oai.completions.create(model="tiny", prompt=PROMPT, frequency_penalty=3)
    with pytest.raises(openai.BadRequestError, match="from 0 to 20"):
        oai.completions.create(model="tiny", prompt=PROMPT, logprobs=21)
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs: true"):
        oai.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], top_logprobs=2
        )
    with pytest.raises(openai.BadRequestError, match="not a token id of this model"):
        oai.completions.create(model="tiny", prompt=PROMPT, logit_bias={"99999999": 5})
    with pytest.raises(openai.BadRequestError, match="not a token id of this model"):
        oai.completions.create(model="tiny", prompt=PROMPT, logit_bias={"²": 5})  # isdigit()
    with pytest.raises(openai.BadRequestError, match="the version after @ must be a number"):
        oai.completions.create(model="tiny@²", prompt=PROMPT)
    with pytest.raises(openai.BadRequestError, match="seed must be a 64-bit signed integer"):
        oai.completions.create(model="tiny", prompt=PROMPT, seed=2**64 - 1, n=2)
    with pytest.raises(openai.BadRequestError, match="logit_bias value must be between -100"):
        oai.completions.create(model="tiny", prompt=PROMPT, logit_bias={"5": 101})
    with pytest.raises(openai.BadRequestError, match="tools"):
        oai.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}],
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        )  # fmt: skip
    # their defaults, as clients send them, are accepted
    defaults = oai.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=2, echo=False, presence_penalty=0.0, best_of=1
    )
    assert defaults.usage.completion_tokens == 2
    with pytest.raises(openai.NotFoundError, match="tiny v2 is not served"):
        oai.completions.create(model="tiny@2", prompt=PROMPT)
    # the process keeps serving
    assert oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=2).choices


def test_models_list_in_both_shapes(oai: openai.OpenAI, client: LocalTarget) -> None:
    assert [m.id for m in oai.models.list().data] == ["tiny"]
    doc = requests.get(f"{client.url}/v1/models", timeout=10).json()
    assert doc["object"] == "list"
    assert doc["models"][0]["format"] == "transformers"


def test_generate_magic_streams_then_one_line(ip: Any, served: str, capsys: Any) -> None:
    ip.run_line_magic("generate", 'tiny "The for statement" --max-tokens 10 --seed 1')
    out = capsys.readouterr().out
    text, _, figures = out.rstrip("\n").rpartition("\n")
    assert text.strip()
    assert figures.startswith("[tiny@1: 10 tokens (length), time to first token")
    assert figures.endswith("tokens/s]")


def test_sixteen_async_streams(client: LocalTarget, served: str) -> None:
    async def main() -> list[str]:
        aio = openai.AsyncOpenAI(base_url=f"{client.url}/v1", api_key=client.token())

        async def one(i: int) -> str:
            stream = await aio.completions.create(
                model="tiny", prompt=f"{PROMPT} {i}", max_tokens=24, temperature=0, stream=True
            )
            pieces = [chunk async for chunk in stream]
            assert pieces[-1].usage.completion_tokens == 24
            return "".join(c.choices[0].text for c in pieces)

        return await asyncio.gather(*(one(i) for i in range(16)))

    texts = asyncio.run(main())
    alone = openai.OpenAI(base_url=f"{client.url}/v1", api_key=client.token())
    # batched with 15 others, a greedy stream says what it says alone
    solo = alone.completions.create(
        model="tiny", prompt=f"{PROMPT} 5", max_tokens=24, temperature=0
    )
    assert texts[5] == solo.choices[0].text


def test_deploy_while_streaming_fails_no_stream(client: LocalTarget, served: str) -> None:
    oai = openai.OpenAI(base_url=f"{client.url}/v1", api_key=client.token())

    def open_stream() -> Any:
        return oai.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=200, temperature=0, stream=True
        )

    results, swap = streams_through(open_stream, 8, lambda: api.deploy("tiny@2"))
    assert results == [("tiny@1", "length")] * 8  # each finished on the version it started on
    assert swap.version == 2
    assert oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=2).model == "tiny@2"
    api.rollback("tiny")
    assert oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=2).model == "tiny@1"


def test_tokens_are_metered_per_api_token(oai: openai.OpenAI, client: LocalTarget) -> None:
    before = api.server_status().usage
    out = oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=7, temperature=0)
    usage = api.server_status().usage
    name = next(n for n in usage if usage[n].completion_tokens)
    was = before.get(name)
    assert usage[name].completion_tokens - (was.completion_tokens if was else 0) == 7
    assert usage[name].prompt_tokens - (was.prompt_tokens if was else 0) == out.usage.prompt_tokens
    text = _metrics(client)
    assert f'km_token_completion_tokens_total{{token="{name}"}}' in text


def test_openapi_documents_no_rows_for_a_language_model(client: LocalTarget, served: str) -> None:
    paths = requests.get(f"{client.url}/openapi.json", timeout=10).json()["paths"]
    assert "/v1/models/tiny:predict" not in paths
    assert "/v1/models/{name}:predict" in paths
    # and :predict on it says where to go instead
    r = requests.post(
        f"{client.url}/v1/models/tiny:predict",
        json={"instances": [[1.0]]},
        headers={"authorization": f"Bearer {client.token()}"},
        timeout=10,
    )
    assert r.status_code == 400
    assert "/v1/completions" in r.json()["error"]


def test_time_to_first_token_and_inter_token_in_prometheus(
    oai: openai.OpenAI, client: LocalTarget
) -> None:
    def count(text: str, metric: str) -> float:
        prefix = f'{metric}_count{{model="tiny",version="1"}} '
        lines = [line for line in text.splitlines() if line.startswith(prefix)]
        return float(lines[0].split()[-1]) if lines else 0.0

    before = _metrics(client)
    list(oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, stream=True, seed=1))
    after = _metrics(client)
    assert (
        count(after, "km_generation_ttft_seconds")
        == count(before, "km_generation_ttft_seconds") + 1
    )
    assert count(after, "km_generation_inter_token_seconds") > count(
        before, "km_generation_inter_token_seconds"
    )


def test_canary_splits_generations(oai: openai.OpenAI, served: str) -> None:
    assert oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=1).model == "tiny@1"
    api.deploy("tiny@2", canary=50)
    try:
        answered = {
            oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=1).model
            for _ in range(4)
        }
        assert answered == {"tiny@1", "tiny@2"}
        pinned = oai.completions.create(model="tiny@2", prompt=PROMPT, max_tokens=1)
        assert pinned.model == "tiny@2"  # NAME@V reaches the canary too
    finally:
        api.rollback("tiny")  # drops the canary
    assert oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=1).model == "tiny@1"


def test_promote_makes_the_generative_canary_live(ip: Any, oai: openai.OpenAI, served: str) -> None:
    api.deploy("tiny@2", canary=50)
    try:
        ip.run_line_magic("promote", "tiny")
        answered = {
            oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=1).model
            for _ in range(4)
        }
        assert answered == {"tiny@2"}
        assert api.server_status().models["tiny"].canary is None  # type: ignore[union-attr]
    finally:
        api.rollback("tiny", 1)
    assert oai.completions.create(model="tiny", prompt=PROMPT, max_tokens=1).model == "tiny@1"


def _metrics(client: LocalTarget) -> str:
    """The Prometheus text (``/metrics`` needs a token: its series name tokens and models)."""
    headers = {"authorization": f"Bearer {client.token()}"}
    answer = requests.get(f"{client.url}/metrics", headers=headers, timeout=10)
    answer.raise_for_status()
    return answer.text


def test_mlflow_transformers_flavor_loads_the_version(oai: openai.OpenAI, served: str) -> None:
    """The version's folder is also MLflow's transformers layout (one copy of the weights):
    MLflow's pyfunc and transformers pipeline generate from it the same greedy text as
    /v1/completions (greedy decoding of the same weights, the new tokens decoded by the same
    tokenizer)."""
    with Store(load_settings()).tracking():
        version = mlflow.MlflowClient().get_model_version("tiny", "1")
        assert version.tags[TAG_MLFLOW_TRANSFORMERS] == "yes"
        folder = Path(mlflow.artifacts.download_artifacts("models:/tiny/1"))
        loaded = mlflow.pyfunc.load_model("models:/tiny/1")
        pipeline = mlflow.transformers.load_model("models:/tiny/1")
    assert [p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors")] == [
        "hf/model.safetensors"
    ]
    theirs = loaded.predict([PROMPT], params={"max_new_tokens": 12, "do_sample": False})
    ours = oai.completions.create(model="tiny@1", prompt=PROMPT, max_tokens=12, temperature=0)
    assert theirs == [PROMPT + ours.choices[0].text]
    again = pipeline(PROMPT, max_new_tokens=12, do_sample=False)
    assert again == [{"generated_text": PROMPT + ours.choices[0].text}]


def test_a_tokenizer_mlflow_cannot_rebuild_is_said_and_tagged(
    oai: openai.OpenAI, lm: Any, tokenizer: Any
) -> None:
    class NotebookTokenizer(type(tokenizer)):  # type: ignore[misc]
        """A tokenizer class of the notebook's own: MLflow rebuilds only transformers'."""

    custom = NotebookTokenizer(
        tokenizer_object=tokenizer.backend_tokenizer, bos_token="<s>", eos_token="</s>"
    )
    result = api.register(lm, tokenizer=custom, name="tiny-own-tokenizer")
    assert result.notes == [
        "MLflow's transformers flavor cannot load this version (MLflow cannot rebuild a "
        "NotebookTokenizer tokenizer (not a transformers class)); the inference process serves it"
    ]
    with Store(load_settings()).tracking():
        tags = mlflow.MlflowClient().get_model_version("tiny-own-tokenizer", "1").tags
    assert tags[TAG_MLFLOW_TRANSFORMERS].startswith("no: MLflow cannot rebuild a NotebookTokenizer")
    # our own layout (the tokenizer beside the weights in hf/) still deploys and generates
    api.deploy("tiny-own-tokenizer")
    out = oai.completions.create(model="tiny-own-tokenizer", prompt=PROMPT, max_tokens=3)
    assert (out.model, out.usage.completion_tokens) == ("tiny-own-tokenizer@1", 3)
