"""The prefix cache on the tiny Llama: a prompt that starts as an earlier one did computes only
the rest, from keys and values copied into its slot, and still decodes transformers' greedy
``generate`` tokens; alone, beside prompts without a cached start, joining a running prefill;
the budget evicts the least recently used prompt."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from kit.tiny_lm import tiny_llama

from generative.test_engine import PROMPTS, Collector, check_echo, echoed, reference, run
from kernel_magics.generative.cache import SlotCache
from kernel_magics.generative.engine import Engine
from kernel_magics.generative.prefix_cache import BLOCK, PrefixCache
from kernel_magics.generative.sampling import SamplingParams
from kernel_magics.generative.sequence import Sequence

GREEDY = SamplingParams(max_tokens=10, temperature=0.0)
# a system prompt of several whole blocks, then each request's own question
SYSTEM = (
    "You answer questions about the Python language. The for statement is used to iterate "
    "over the elements of a sequence. A class definition defines a class object and "
    "exceptions are raised when an error is detected. "
)
QUESTIONS = ["What is a generator?", "How do I open a file?", "Objects", "Why use with?"]


@pytest.fixture(scope="module")
def served_lm() -> Any:
    return tiny_llama()


def engine(served_lm: Any, tokenizer: Any, cache_tokens: int = 4096) -> Engine:
    return Engine(
        served_lm,
        tokenizer,
        max_running=8,
        kv_cache_tokens=4096,
        max_queued=8,
        prefix_cache_tokens=cache_tokens,
    )


def check(served_lm: Any, tokenizer: Any, prompts: list[str], seqs: list[Sequence]) -> None:
    with torch.inference_mode():
        for prompt, seq in zip(prompts, seqs, strict=True):
            assert seq.tokens == reference(served_lm, tokenizer, prompt, GREEDY.max_tokens), prompt


def test_a_repeated_prompt_computes_only_its_last_token(served_lm: Any, tokenizer: Any) -> None:
    e = engine(served_lm, tokenizer)
    try:
        run(e, tokenizer, PROMPTS, GREEDY)
        assert e.describe()["prefix_hits"] == 0
        lengths = [len(tokenizer(p)["input_ids"]) for p in PROMPTS]
        assert e.describe()["prefix_cache_tokens"] == sum(lengths)
        again, _ = run(e, tokenizer, PROMPTS[::-1], GREEDY)
        described = e.describe()
        assert described["prefix_hits"] == len(PROMPTS)
        assert described["prefix_tokens_reused"] == sum(n - 1 for n in lengths)
        assert [s.cached for s in again] == [n - 1 for n in lengths[::-1]]
        check(served_lm, tokenizer, PROMPTS[::-1], again)
    finally:
        e.stop()


def shared(a: list[int], b: list[int]) -> int:
    """How many tokens ``a`` and ``b`` start with alike."""
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def test_a_shared_system_prompt_is_reused_to_its_last_shared_token(
    served_lm: Any, tokenizer: Any
) -> None:
    """One request with the system prompt, then a group where two share its start and one
    shares nothing: one forward computes prompts with and without a cached start. The shared
    start is reused by whole blocks, then token by token past the last one."""
    e = engine(served_lm, tokenizer)
    prompts = [SYSTEM + q for q in QUESTIONS]
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    try:
        run(e, tokenizer, prompts[:1], GREEDY)
        group = prompts[1:3] + [PROMPTS[2]]
        seqs, _ = run(e, tokenizer, group, GREEDY)
        for seq, own in zip(seqs[:2], ids[1:3], strict=True):
            assert seq.cached == shared(ids[0], own) >= 3 * BLOCK
        assert {seq.cached % BLOCK for seq in seqs[:2]} != {0}  # not only whole blocks
        assert seqs[2].cached == 0
        check(served_lm, tokenizer, group, seqs)
    finally:
        e.stop()


def test_a_request_with_a_cached_start_joins_a_running_prefill(
    served_lm: Any, tokenizer: Any
) -> None:
    class Joined(Engine):
        burst: list[Sequence] = []

        def _prefill(self, seqs: list[Sequence]) -> list[Sequence]:
            burst, self.burst = self.burst, []
            for seq in burst:  # they arrive while this forward runs
                self.submit(seq)
            return super()._prefill(seqs)

    e = Joined(
        served_lm, tokenizer, max_running=8, kv_cache_tokens=4096, max_queued=8,
        prefix_cache_tokens=4096,
    )  # fmt: skip
    prompts = [SYSTEM + QUESTIONS[0], PROMPTS[0], SYSTEM + QUESTIONS[3]]
    try:
        run(e, tokenizer, prompts[:1], GREEDY)
        collect = Collector(2)
        seqs = [Sequence(tokenizer(p)["input_ids"], GREEDY, collect) for p in prompts[1:]]
        e.burst = seqs[1:]
        e.submit(seqs[0])
        assert collect.done.wait(30)
        assert seqs[0].cached == 0
        assert seqs[1].cached >= 3 * BLOCK
        check(served_lm, tokenizer, prompts[1:], seqs)
    finally:
        e.stop()


def random_cache(layers: int) -> SlotCache:
    """Two slots of 64 tokens holding random keys and values."""
    cache = SlotCache(layers=layers, slots=2, kv_heads=1, head_dim=4, dtype=torch.float32)
    cache.reserve(64)
    for tensor in cache.keys + cache.values:
        tensor.normal_()
    return cache


def test_an_echoed_prompt_is_computed_whole(served_lm: Any, tokenizer: Any) -> None:
    """A kept prompt has no logits for its positions: a request that wants the prompt's own
    log-probabilities (echo) computes it whole, and takes nothing from the cache."""
    e = engine(served_lm, tokenizer)
    try:
        run(e, tokenizer, PROMPTS, GREEDY)
        hits = e.describe()["prefix_hits"]
        echo = SamplingParams(max_tokens=4, temperature=0.0, logprobs=0, echo=True)
        prompts = echoed(e, tokenizer, PROMPTS, echo)
        assert e.describe()["prefix_hits"] == hits
        with torch.inference_mode():
            for prompt, entries in zip(PROMPTS, prompts, strict=True):
                check_echo(entries, served_lm, tokenizer, prompt, 1e-3)
        # echo without logprobs: the prompt's text only, the cache is used
        run(e, tokenizer, PROMPTS, SamplingParams(max_tokens=4, temperature=0.0, echo=True))
        assert e.describe()["prefix_hits"] == hits + len(PROMPTS)
    finally:
        e.stop()


def test_the_budget_evicts_the_least_recently_used_prompt() -> None:
    cache = random_cache(layers=2)
    prefixes = PrefixCache(budget=30)
    first, second, third = list(range(10)), list(range(100, 110)), list(range(200, 215))
    prefixes.store(first, cache, 0)
    prefixes.store(second, cache, 1)
    assert prefixes.load(first, cache, 1) == 9  # first is now the most recent
    prefixes.store(third, cache, 0)  # 35 tokens > 30: second goes
    assert prefixes.tokens == 25
    assert prefixes.load(second, cache, 1) == 0
    assert prefixes.load(third, cache, 1) == 14
    assert torch.equal(cache.keys[1][1, :, :14], cache.keys[1][0, :, :14])
    prefixes.store(list(range(40)), cache, 0)  # over the whole budget: not kept
    assert prefixes.tokens == 25


def test_a_match_goes_on_past_the_last_whole_block() -> None:
    cache = random_cache(layers=1)
    prefixes = PrefixCache(budget=100)
    prefixes.store(list(range(40)), cache, 0)
    assert prefixes.load([*range(37), -1, -2], cache, 1) == 37  # 2 blocks, then 5 tokens
    assert torch.equal(cache.keys[0][1, :, :37], cache.keys[0][0, :, :37])
    assert prefixes.load([*range(44)], cache, 1) == 40  # the whole stored prompt, and more
    assert prefixes.load([*range(10), -1], cache, 1) == 0  # under one block: computed
    assert prefixes.load([-1, *range(1, 40)], cache, 1) == 0  # differs in the first block


def test_no_prefix_cache_when_the_setting_is_zero(served_lm: Any, tokenizer: Any) -> None:
    e = engine(served_lm, tokenizer, cache_tokens=0)
    try:
        run(e, tokenizer, PROMPTS[:1], GREEDY)
        seqs, _ = run(e, tokenizer, PROMPTS[:1], GREEDY)
        assert e.prefixes is None
        assert seqs[0].cached == 0
        assert "prefix_hits" not in e.describe()
    finally:
        e.stop()


def test_a_conversations_next_turn_starts_after_the_last_answer(
    served_lm: Any, tokenizer: Any
) -> None:
    """A chat turn (``Sequence.keep``) is kept with its completion when it ends: the next
    turn, whose prompt is the last one, its answer and a new message, reuses the answer's
    whole blocks too, and decodes ``generate``'s tokens; a completion request keeps its
    prompt only."""
    e = engine(served_lm, tokenizer)
    params = SamplingParams(max_tokens=40, temperature=0.0)
    first = tokenizer(SYSTEM + QUESTIONS[0])["input_ids"]
    try:
        collect = Collector(1)
        turn = Sequence(first, params, collect, keep=True)
        e.submit(turn)
        assert collect.done.wait(30)
        assert turn.finish_reason == "length"  # the tiny model never says EOS here
        answered = first + turn.tokens
        follow_up = answered + tokenizer(" " + QUESTIONS[1])["input_ids"]
        collect = Collector(1)
        nxt = Sequence(follow_up, GREEDY, collect)
        e.submit(nxt)
        assert collect.done.wait(30)
        # all of the kept turn: its prompt and its answer but the last token (never computed)
        assert nxt.cached == len(answered) - 1
        with torch.inference_mode():
            ids = torch.tensor([follow_up])
            out = served_lm.generate(
                ids, max_new_tokens=GREEDY.max_tokens, do_sample=False, eos_token_id=None,
                pad_token_id=1,
            )  # fmt: skip
        assert nxt.tokens == out[0, len(follow_up) :].tolist()
        # the follow-up was a completion request: its prompt is kept, not its answer
        assert e.prefixes is not None
        assert tuple(follow_up) in e.prefixes
        assert tuple(follow_up + nxt.tokens[:-1]) not in e.prefixes
    finally:
        e.stop()
