"""The continuous-batching engine in-process on the tiny Llama: the same tokens as
transformers' own greedy ``generate`` whatever runs beside a sequence, sampling with a seed,
stop strings, the bounded queue, cancellation."""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import replace
from typing import Any

import pytest
import torch

from kernel_magics.errors import InvalidInput, Overloaded
from kernel_magics.generative import engine as engine_module
from kernel_magics.generative.decode import _attend_step
from kernel_magics.generative.engine import Engine
from kernel_magics.generative.linear import packs
from kernel_magics.generative.sampling import SCORE_ROWS, SamplingParams, TokenLogprob
from kernel_magics.generative.sequence import Sequence

PROMPTS = [
    "The for statement is used to iterate",
    "Objects",
    "A class definition defines a class object and",
    "Exceptions are raised",
]


class Collector:
    def __init__(self, expected: int) -> None:
        self.left, self.done = expected, threading.Event()
        self.text: dict[int, str] = {}
        self.logprobs: dict[int, list[TokenLogprob]] = {}
        self.lock = threading.Lock()

    def __call__(self, seq: Sequence, delta: str, finish: str | None, logprobs: Any = None) -> None:
        with self.lock:
            self.text[id(seq)] = self.text.get(id(seq), "") + delta
            self.logprobs.setdefault(id(seq), []).extend(logprobs or [])
            if finish is not None:
                self.left -= 1
                if self.left == 0:
                    self.done.set()


@pytest.fixture(scope="module")
def served_lm() -> Any:
    """The tiny Llama's own copy for these engines: an engine prepares the model it serves (its
    weights become views of transposed matrices, decode.py), which the session's ``lm``, saved
    to the store by other modules, must not see."""
    from kit.tiny_lm import tiny_llama

    return tiny_llama()


@pytest.fixture(scope="module")
def engine(served_lm: Any, tokenizer: Any) -> Any:
    e = Engine(served_lm, tokenizer, max_running=4, kv_cache_tokens=4096, max_queued=8, name="t")
    yield e
    e.stop()


def prompt_reference(lm: Any, tokenizer: Any, prompt: str) -> torch.Tensor:
    """Each of a prompt's tokens' log-probability given those before it, by one full forward."""
    ids = tokenizer(prompt)["input_ids"]
    table = torch.log_softmax(lm(torch.tensor([ids])).logits[0, :-1].float(), -1)
    return table.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def echoed(
    engine: Engine, tokenizer: Any, prompts: list[str], params: SamplingParams
) -> list[list[TokenLogprob]]:
    """Each prompt's log-probabilities as the engine hands them (``echo``), all submitted at
    once."""
    collect = Collector(len(prompts))
    seqs = [Sequence(tokenizer(p)["input_ids"], params, collect) for p in prompts]
    engine.submit(*seqs)
    assert collect.done.wait(60)
    return [collect.logprobs[id(seq)][: seq.prompt_tokens] for seq in seqs]


def check_echo(
    entries: list[TokenLogprob], lm: Any, tokenizer: Any, prompt: str, tolerance: float
) -> None:
    ids = tokenizer(prompt)["input_ids"]
    assert [token for token, _, _ in entries] == ids
    assert entries[0][1:] == (None, ())  # nothing before the first token
    expected = prompt_reference(lm, tokenizer, prompt).tolist()
    assert [lp for _, lp, _ in entries[1:]] == pytest.approx(expected, abs=tolerance)


def run(engine: Engine, tokenizer: Any, prompts: list[str], params: SamplingParams) -> tuple:
    collect = Collector(len(prompts))
    seqs = [Sequence(tokenizer(p)["input_ids"], params, collect) for p in prompts]
    for seq in seqs:
        engine.submit(seq)
    assert collect.done.wait(60)
    return seqs, [collect.text[id(s)] for s in seqs]


def reference(lm: Any, tokenizer: Any, prompt: str, n: int) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = lm.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=1)
    return out[0, ids.shape[1] :].tolist()


def penalized_reference(
    lm: Any, tokenizer: Any, prompt: str, n: int, presence: float, frequency: float
) -> list[int]:
    """Greedy tokens one full forward at a time, OpenAI's penalties on the completion's."""
    ids = tokenizer(prompt)["input_ids"]
    out: list[int] = []
    for _ in range(n):
        logits = lm(torch.tensor([ids + out])).logits[0, -1].float()
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.shape[0])
        logits = logits - frequency * counts - presence * (counts > 0)
        out.append(int(logits.argmax()))
    return out


def test_presence_and_frequency_penalties(engine: Engine, served_lm: Any, tokenizer: Any) -> None:
    params = SamplingParams(
        max_tokens=24, temperature=0.0, presence_penalty=1.5, frequency_penalty=1.0
    )
    seqs, _ = run(engine, tokenizer, PROMPTS, params)
    with torch.inference_mode():
        for prompt, seq in zip(PROMPTS, seqs, strict=True):
            assert seq.tokens == penalized_reference(served_lm, tokenizer, prompt, 24, 1.5, 1.0)
        plain = [reference(served_lm, tokenizer, p, 24) for p in PROMPTS]
    # the tiny model repeats itself; the penalties make it repeat less
    repeats = sum(len(t) - len(set(t)) for t in plain)
    assert sum(len(s.tokens) - len(set(s.tokens)) for s in seqs) < repeats


def biased_reference(
    lm: Any, tokenizer: Any, prompt: str, n: int, bias: dict[int, float], eos: set[int]
) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens one full forward at a time with ``bias`` added to the logits, and each
    step's log-probabilities of the model's own (unbiased) logits."""
    ids = tokenizer(prompt)["input_ids"]
    out: list[int] = []
    tables = []
    for _ in range(n):
        logits = lm(torch.tensor([ids + out])).logits[0, -1].float()
        tables.append(torch.log_softmax(logits, -1))
        for token, value in bias.items():
            logits[token] += value
        token = int(logits.argmax())
        if token in eos:
            break
        out.append(token)
    return out, tables


def test_logprobs_and_logit_bias(engine: Engine, served_lm: Any, tokenizer: Any) -> None:
    with torch.inference_mode():
        first = reference(served_lm, tokenizer, PROMPTS[0], 1)[0]
    bias = {first: -100, 7: 3}  # the greedy first token out, another favoured (ints, as JSON)
    params = SamplingParams(
        max_tokens=12, temperature=0.0, logit_bias=tuple(bias.items()), logprobs=3
    )
    collect = Collector(len(PROMPTS))
    seqs = [Sequence(tokenizer(p)["input_ids"], params, collect) for p in PROMPTS]
    engine.submit(*seqs)
    assert collect.done.wait(60)
    with torch.inference_mode():
        for prompt, seq in zip(PROMPTS, seqs, strict=True):
            tokens, tables = biased_reference(
                served_lm, tokenizer, prompt, 12, bias, engine.outputs.eos
            )
            assert seq.tokens == tokens
            entries = collect.logprobs[id(seq)]
            assert [token for token, _, _ in entries] == tokens  # one entry a kept token
            for (token, logprob, top), table in zip(entries, tables, strict=False):
                assert logprob == pytest.approx(float(table[token]), abs=1e-3)
                values, ids = torch.topk(table, 3)
                assert [t for t, _ in top] == ids.tolist()
                assert [lp for _, lp in top] == pytest.approx(values.tolist(), abs=1e-3)


def test_echo_shares_a_prefill_only_with_the_same_ask(
    engine: Engine, served_lm: Any, tokenizer: Any
) -> None:
    """One prefill: a prompt sent with echo, the same prompt plain, and again with echo and
    other alternatives: each gets what it asked for, and the tokens of a plain run."""
    prompt = PROMPTS[2]
    plain = SamplingParams(max_tokens=6, temperature=0.0)
    asks = [
        SamplingParams(max_tokens=6, temperature=0.0, logprobs=1, echo=True),
        plain,
        SamplingParams(max_tokens=6, temperature=0.0, logprobs=3, echo=True),
        SamplingParams(max_tokens=6, temperature=0.0, logprobs=1, echo=True),
    ]
    collect = Collector(len(asks))
    seqs = [Sequence(tokenizer(prompt)["input_ids"], p, collect) for p in asks]
    before = engine.shared_prompts
    engine.submit(*seqs)
    assert collect.done.wait(60)
    assert engine.shared_prompts - before == 1  # the fourth shares the first's prefill
    with torch.inference_mode():
        expected = reference(served_lm, tokenizer, prompt, 6)
        for seq, ask in zip(seqs, asks, strict=True):
            assert seq.tokens == expected
            entries = collect.logprobs.get(id(seq), [])
            if not ask.echo:
                assert entries == []
                continue
            check_echo(entries[: seq.prompt_tokens], served_lm, tokenizer, prompt, 1e-3)
            assert [len(top) for _, _, top in entries[1:]] == [ask.logprobs] * (len(entries) - 1)
            assert [token for token, _, _ in entries[seq.prompt_tokens :]] == expected


def test_a_long_echoed_prompt_goes_through_the_output_layer_a_block_at_a_time(
    served_lm: Any, tokenizer: Any
) -> None:
    """A prompt longer than one block of scored rows, beside a short one: the output layer
    never takes more than a block's rows (no ``[prompt, vocabulary]`` logits at once), and
    both prompts' log-probabilities are those of one full forward (the blocks' offsets)."""
    e = Engine(served_lm, tokenizer, max_running=4, kv_cache_tokens=4096, max_queued=8)
    assert e.direct is not None
    asked: list[int] = []
    output_layer = e.direct._logits

    def recording(hidden: torch.Tensor, step: bool = False) -> torch.Tensor:
        asked.append(hidden.shape[0])
        return output_layer(hidden, step)

    e.direct._logits = recording  # type: ignore[method-assign]
    long = " ".join(PROMPTS * 12)
    assert len(tokenizer(long)["input_ids"]) > SCORE_ROWS + 10
    prompts = [PROMPTS[1], long]
    try:
        entries = echoed(e, tokenizer, prompts, SamplingParams(max_tokens=1, logprobs=1, echo=True))
    finally:
        e.stop()
    assert max(asked) <= SCORE_ROWS
    with torch.inference_mode():
        for prompt, got in zip(prompts, entries, strict=True):
            check_echo(got, served_lm, tokenizer, prompt, 1e-3)


def test_batched_greedy_matches_generate(engine: Engine, served_lm: Any, tokenizer: Any) -> None:
    # 8 prompts of different lengths through 4 slots: sequences join and leave mid-batch
    params = SamplingParams(max_tokens=24, temperature=0.0)
    seqs, texts = run(engine, tokenizer, PROMPTS * 2, params)
    with torch.inference_mode():
        expected = {p: reference(served_lm, tokenizer, p, 24) for p in PROMPTS}
    for prompt, seq, text in zip(PROMPTS * 2, seqs, texts, strict=True):
        assert seq.tokens == expected[prompt]
        assert seq.finish_reason == "length"
        assert text == tokenizer.decode(seq.tokens)
    assert engine.reserved == 0
    assert not engine.running


# bfloat16 weights are packed for oneDNN where this CPU multiplies bfloat16 natively
BF16_PATH = "direct, packed weights" if packs(torch.bfloat16) else "direct"
SHAPES = {
    # grouped-query attention: 4 query heads share 2 key/value heads
    "llama-gqa": ("LlamaConfig", {"num_key_value_heads": 2}, "direct", torch.float32),
    # biases on the query/key/value projections, grouped-query attention
    "qwen2": (
        "Qwen2Config", {"num_key_value_heads": 2, "use_sliding_window": False}, "direct",
        torch.float32,
    ),
    # the output layer tied to the embedding: the direct step reads it untransposed
    "llama-tied": ("LlamaConfig", {"tie_word_embeddings": True}, "direct", torch.float32),
    # an activation the direct step does not reproduce: the model's own forward decodes
    "llama-gelu": ("LlamaConfig", {"hidden_act": "gelu"}, "model", torch.float32),
    # learned positions, a fused query/key/value projection, GELU: the model's own forward
    "gpt2": ("GPT2Config", {}, "model", torch.float32),
    # served in bfloat16 (setting gen_dtype): the same tokens as generate in bfloat16
    "llama-bf16": ("LlamaConfig", {}, BF16_PATH, torch.bfloat16),
    "qwen2-bf16": (
        "Qwen2Config", {"num_key_value_heads": 2, "use_sliding_window": False}, BF16_PATH,
        torch.bfloat16,
    ),
}  # fmt: skip


@pytest.mark.parametrize("shape", list(SHAPES))
def test_other_shapes_decode_as_generate(shape: str, tokenizer: Any) -> None:
    import transformers

    config_class, extra, path, dtype = SHAPES[shape]
    torch.manual_seed(1)
    config = getattr(transformers, config_class)(
        vocab_size=1024, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=512, bos_token_id=0, eos_token_id=1,
        **extra,
    )  # fmt: skip
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # biases start at zero, where one left out would not show
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, 0.5)
    model = model.to(dtype)
    # the engine prepares the model it serves (packed weights empty its linears): the
    # reference decodes with an untouched copy
    untouched = copy.deepcopy(model)
    e = Engine(model, tokenizer, max_running=4, kv_cache_tokens=4096, max_queued=8, name=shape)
    try:
        assert e.describe()["decode_path"] == path
        seqs, _ = run(e, tokenizer, PROMPTS, SamplingParams(max_tokens=16, temperature=0.0))
        echo = SamplingParams(max_tokens=2, temperature=0.0, logprobs=2, echo=True)
        prompts = echoed(e, tokenizer, PROMPTS, echo)
    finally:
        e.stop()
    with torch.inference_mode():
        for prompt, seq in zip(PROMPTS, seqs, strict=True):
            assert seq.tokens == reference(untouched, tokenizer, prompt, 16)
        # echo: the prompts' own log-probabilities, by this path's prefill
        tolerance = 1e-3 if dtype == torch.float32 else 0.1
        for prompt, entries in zip(PROMPTS, prompts, strict=True):
            check_echo(entries, untouched, tokenizer, prompt, tolerance)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_bfloat16_step_attention_is_attention(kv_heads: int) -> None:
    """The decode step's own bfloat16 attention against float64 attention over the same
    numbers: grouped-query heads read their own key/value head, masked positions (filled with
    huge values) and what the float32 scratch held before (NaN) change nothing, and the result
    is within bfloat16's rounding."""
    torch.manual_seed(3)
    rows, heads, dim, capacity, kv_len = 5, 4, 16, 32, 12
    keys = torch.randn(rows, kv_heads, capacity, dim).to(torch.bfloat16)[:, :, :kv_len]
    values = torch.randn(rows, kv_heads, capacity, dim).to(torch.bfloat16)[:, :, :kv_len]
    q = torch.randn(rows, heads, 1, dim).to(torch.bfloat16)
    lengths = torch.tensor([12, 3, 7, 1, 10])  # each row's cached tokens
    hidden = torch.arange(kv_len)[None, :] >= lengths[:, None]
    values = values.masked_fill(hidden[:, None, :, None], 1e4)
    mask = torch.zeros(hidden.shape, dtype=torch.bfloat16).masked_fill_(
        hidden, torch.finfo(torch.bfloat16).min
    )[:, None, None, :]
    # float32 room as the cache keeps it: bigger than this step needs, left over from others
    scratch = torch.full((rows + 2, kv_heads, capacity, dim), float("nan"))
    out = _attend_step(q, keys, values, mask, (scratch, scratch.clone()))
    group = heads // kv_heads
    expected = torch.empty(rows, heads, 1, dim, dtype=torch.float64)
    for row in range(rows):
        n = int(lengths[row])
        for head in range(heads):
            k = keys[row, head // group, :n].double()
            v = values[row, head // group, :n].double()
            weights = torch.softmax(k @ q[row, head, 0].double() / dim**0.5, dim=0)
            expected[row, head, 0] = weights @ v
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected, atol=2e-2, rtol=2e-2)


def test_seed_gives_the_same_tokens(engine: Engine, tokenizer: Any) -> None:
    params = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.9, top_k=40, seed=7)
    seqs, _ = run(engine, tokenizer, [PROMPTS[0], PROMPTS[1], PROMPTS[0]], params)
    assert seqs[0].tokens == seqs[2].tokens
    other, _ = run(engine, tokenizer, [PROMPTS[0]], SamplingParams(max_tokens=20, seed=8))
    assert other[0].tokens != seqs[0].tokens


def test_an_idle_engine_thread_ends_and_the_next_request_starts_another(
    served_lm: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine's thread (and its OpenMP team) ends after ``IDLE_EXIT_S`` without work; the
    next request starts another with the engine's thread count, and gets the same tokens.
    The caller's own torch thread count is left as it was."""
    monkeypatch.setattr(engine_module, "IDLE_EXIT_S", 0.05)
    own = torch.get_num_threads()
    idle = Engine(
        served_lm, tokenizer, max_running=2, kv_cache_tokens=1024, max_queued=4, threads=2
    )
    try:
        greedy = SamplingParams(max_tokens=12, temperature=0)
        first, _ = run(idle, tokenizer, [PROMPTS[0]], greedy)
        deadline = time.monotonic() + 10
        while idle._thread is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert idle._thread is None  # ended, idle
        counts: list[int] = []  # the thread count where the events are posted: its thread
        finished = threading.Event()
        seq = Sequence(
            tokenizer(PROMPTS[0])["input_ids"],
            greedy,
            lambda _seq, _delta, finish, *_: finish is None or finished.set(),
            post=lambda fn, *args: (counts.append(torch.get_num_threads()), fn(*args)),
        )
        idle.submit(seq)
        assert finished.wait(60)
        assert seq.tokens == first[0].tokens
        assert set(counts) == {2}
        assert torch.get_num_threads() == own
    finally:
        idle.stop()


def test_stop_string_ends_before_it(engine: Engine, tokenizer: Any) -> None:
    seqs, texts = run(engine, tokenizer, [PROMPTS[2]], SamplingParams(max_tokens=40, temperature=0))
    full = texts[0]
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    assert stop.strip()
    seqs, texts = run(
        engine, tokenizer, [PROMPTS[2]], SamplingParams(max_tokens=40, temperature=0, stop=(stop,))
    )
    assert texts[0] == full[: full.index(stop)]
    assert seqs[0].finish_reason == "stop"


def test_too_long_names_prompt_and_max_tokens(engine: Engine, tokenizer: Any) -> None:
    ids = tokenizer(PROMPTS[0])["input_ids"]
    with pytest.raises(InvalidInput, match=rf"\({len(ids)} tokens\) \+ max_tokens \(600\)"):
        engine.submit(Sequence(ids, SamplingParams(max_tokens=600), lambda *a: None))


def test_queue_is_bounded_and_cancel_frees_the_slot(served_lm: Any, tokenizer: Any) -> None:
    e = Engine(
        served_lm, tokenizer, max_running=1, kv_cache_tokens=4096, max_queued=1, name="small"
    )
    try:
        first_text = threading.Event()
        ids = tokenizer(PROMPTS[0])["input_ids"]
        long = Sequence(
            ids, SamplingParams(max_tokens=450, temperature=0), lambda *a: first_text.set()
        )
        e.submit(long)
        assert first_text.wait(30)
        collect = Collector(1)
        queued = Sequence(ids, SamplingParams(max_tokens=3, temperature=0), collect)
        e.submit(queued)
        with pytest.raises(Overloaded, match="queued"):
            e.submit(Sequence(ids, SamplingParams(max_tokens=3), lambda *a: None))
        long.cancelled = True
        assert collect.done.wait(30)
        assert long.finish_reason == "cancelled"
        assert len(long.tokens) < 450
        assert queued.finish_reason == "length"
    finally:
        e.stop()


def test_gen_dtype_setting_serves_bfloat16(
    lm_folder: Any, tokenizer: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loader the inference process runs: ``gen_dtype`` sets the served precision, a value
    it does not know is refused by name, and prompts encode as the tokenizer's own call does."""
    import shutil

    from kernel_magics.generative.loader import load_transformers
    from kernel_magics.generative.register import HF_DIR

    config = tmp_path / "tiny" / HF_DIR / "config.json"
    shutil.copytree(lm_folder, config.parent)
    monkeypatch.setenv("KERNEL_MAGICS_GEN_DTYPE", "bfloat16")
    generator = load_transformers(config).generator
    try:
        state = generator.describe()["generation"]
        assert (state["dtype"], state["decode_path"]) == ("bfloat16", BF16_PATH)
        for prompt in [*PROMPTS, "naïve café — ünïcode", ""]:
            assert generator.encode(prompt) == tokenizer(prompt)["input_ids"]
        assert generator.warm() > 0  # a generation through the bfloat16 engine ends
    finally:
        generator.close()
    monkeypatch.setenv("KERNEL_MAGICS_GEN_DTYPE", "float16")
    with pytest.raises(InvalidInput, match="gen_dtype must be one of auto, bfloat16, float32"):
        load_transformers(config)


def test_engine_threads_follow_the_setting_and_the_model_size(
    served_lm: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gen_threads`` names the engine's intra-op threads; at 0 the weights' size decides
    (small: ``torch_threads``; from ``GEN_LARGE_WEIGHTS_BYTES`` on: every usable core). The
    engine thread itself runs with that count: torch's is per thread."""
    import os

    from kernel_magics.config import Settings
    from kernel_magics.generative import loader

    cores = len(os.sched_getaffinity(0))
    assert loader.engine_threads(Settings(gen_threads=3), served_lm) == 3
    assert loader.engine_threads(Settings(gen_threads=0, torch_threads=1), served_lm) == 1
    monkeypatch.setattr(loader, "GEN_LARGE_WEIGHTS_BYTES", 1024)  # the tiny model is "large"
    assert loader.engine_threads(Settings(gen_threads=0, torch_threads=1), served_lm) == cores

    e = Engine(
        served_lm, tokenizer, max_running=2, kv_cache_tokens=512, max_queued=2, name="t", threads=2
    )
    seen: list[int] = []
    done = threading.Event()

    def on_event(seq: Sequence, delta: str, finish: str | None, logprobs: Any) -> None:
        seen.append(torch.get_num_threads())  # delivered on the engine thread (no post given)
        if finish is not None:
            done.set()

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the submitting thread's count is not the engine's
    try:
        e.submit(
            Sequence(tokenizer("Objects")["input_ids"], SamplingParams(max_tokens=3), on_event)
        )
        assert done.wait(30)
        assert set(seen) == {2}
        assert e.describe()["threads"] == 2
    finally:
        e.stop()
        torch.set_num_threads(before)


class Recording(Engine):
    """An engine that records its forwards, and submits ``burst`` during its next prefill."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.order: list[tuple[str, int]] = []
        self.burst: list[Sequence] = []
        super().__init__(*args, **kwargs)

    def _prefill(self, seqs: list[Sequence]) -> list[Sequence]:
        self.order.append(("prefill", len(seqs)))
        burst, self.burst = self.burst, []
        for seq in burst:  # they arrive while this forward runs
            self.submit(seq)
        return super()._prefill(seqs)

    def _decode(self) -> None:
        self.order.append(("decode", len(self.running)))
        super()._decode()


def test_requests_arriving_during_a_prefill_join_it_with_generates_tokens(
    served_lm: Any, tokenizer: Any
) -> None:
    """A burst that arrives while a prompt is being prefilled joins that forward between two
    layers (caught up through the layers done), before any decode step; prompts longer and
    shorter than the first still give ``generate``'s greedy tokens."""

    e = Recording(served_lm, tokenizer, max_running=4, kv_cache_tokens=4096, max_queued=8)
    collect = Collector(4)
    params = SamplingParams(max_tokens=12, temperature=0.0)
    try:
        seqs = [Sequence(tokenizer(p)["input_ids"], params, collect) for p in PROMPTS]
        e.burst = seqs[1:]
        e.submit(seqs[0])
        assert collect.done.wait(30)
        assert e.order[:2] == [("prefill", 1), ("decode", 4)]
        with torch.inference_mode():
            for prompt, seq in zip(PROMPTS, seqs, strict=True):
                assert seq.tokens == reference(served_lm, tokenizer, prompt, 12), prompt
    finally:
        e.stop()


def test_echoed_prompts_joining_a_prefill_get_their_own_log_probabilities(
    served_lm: Any, tokenizer: Any
) -> None:
    """Prompts to score (echo) arrive during a plain prompt's prefill and join it, one of them
    twice: each gets its own prompt's log-probabilities and generate's tokens."""
    plain = SamplingParams(max_tokens=8, temperature=0.0)
    scored = SamplingParams(max_tokens=8, temperature=0.0, logprobs=2, echo=True)
    asks = [(PROMPTS[0], plain), (PROMPTS[1], scored), (PROMPTS[2], plain)]
    asks += [(PROMPTS[1], scored), (PROMPTS[3], replace(scored, logprobs=0))]
    e = Recording(served_lm, tokenizer, max_running=8, kv_cache_tokens=4096, max_queued=8)
    collect = Collector(len(asks))
    try:
        seqs = [Sequence(tokenizer(p)["input_ids"], params, collect) for p, params in asks]
        e.burst = seqs[1:]
        e.submit(seqs[0])
        assert collect.done.wait(30)
        assert e.order[:2] == [("prefill", 1), ("decode", len(asks))]  # they joined it
        assert e.shared_prompts == 1  # the second ask of PROMPTS[1] copies the first
        with torch.inference_mode():
            for (prompt, params), seq in zip(asks, seqs, strict=True):
                assert seq.tokens == reference(served_lm, tokenizer, prompt, 8), prompt
                entries = collect.logprobs.get(id(seq), [])
                if params.echo:
                    check_echo(entries[: seq.prompt_tokens], served_lm, tokenizer, prompt, 1e-3)
                else:
                    assert entries == []
    finally:
        e.stop()


def test_identical_prompts_in_one_prefill_are_computed_once(served_lm: Any, tokenizer: Any) -> None:
    """A group and the burst joining its forward send the same prompts more than once: each
    distinct prompt is computed once and copied into the others' slots; every request still
    decodes ``generate``'s greedy tokens from its own slot, and a seeded sampler sharing a
    greedy request's prompt samples what it samples alone."""

    class Joined(Engine):
        burst: list[Sequence] = []  # set by the test, emptied by the engine

        def _prefill(self, seqs: list[Sequence]) -> list[Sequence]:
            burst, self.burst = self.burst, []
            for seq in burst:  # they arrive while this forward runs
                self.submit(seq)
            return super()._prefill(seqs)

    e = Joined(served_lm, tokenizer, max_running=8, kv_cache_tokens=4096, max_queued=8)
    greedy = SamplingParams(max_tokens=12, temperature=0.0)
    seeded = SamplingParams(max_tokens=12, temperature=0.9, seed=11)
    asks = [(0, greedy), (0, greedy), (0, greedy), (2, greedy), (2, greedy), (0, seeded)]
    collect = Collector(len(asks))
    try:
        seqs = [Sequence(tokenizer(PROMPTS[i])["input_ids"], p, collect) for i, p in asks]
        e.burst = seqs[2:]
        with e._wake:  # the first two make one group
            e.submit(seqs[0])
            e.submit(seqs[1])
        assert collect.done.wait(30)
        assert e.describe()["shared_prompts"] == 4  # three of prompt 0, one of prompt 2
        with torch.inference_mode():
            for (index, params), seq in zip(asks, seqs, strict=True):
                if params is greedy:
                    assert seq.tokens == reference(served_lm, tokenizer, PROMPTS[index], 12)
        alone, _ = run(e, tokenizer, [PROMPTS[0]], seeded)
        assert seqs[-1].tokens == alone[0].tokens
        assert e.describe()["shared_prompts"] == 4
    finally:
        e.stop()


def test_a_blocked_weight_copy_decodes_as_generate(
    served_lm: Any, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large float32 model keeps a blocked copy of its weights beside the plain one
    (``gen_blocked_weights``): prefills and steps of 4 rows or more read it, fewer rows the
    plain copy, and either way the tokens are ``generate``'s greedy ones."""
    from kernel_magics.config import Settings
    from kernel_magics.generative import loader

    on, off = Settings(gen_blocked_weights=True), Settings(gen_blocked_weights=False)
    assert not loader.blocked_copy(on, served_lm)  # the tiny model is small
    monkeypatch.setattr(loader, "GEN_LARGE_WEIGHTS_BYTES", 1024)  # now it is "large"
    assert loader.blocked_copy(on, served_lm)
    assert not loader.blocked_copy(off, served_lm)
    assert not loader.blocked_copy(on, copy.deepcopy(served_lm).to(torch.bfloat16))

    e = Engine(
        served_lm, tokenizer, max_running=4, kv_cache_tokens=4096, max_queued=8, blocked=True
    )
    try:
        assert e.describe()["decode_path"] == "direct, plain and blocked weights"
        # 8 prompts through 4 slots: steps of 4 rows down to 1 as sequences end
        params = SamplingParams(max_tokens=24, temperature=0.0)
        seqs, _ = run(e, tokenizer, PROMPTS * 2, params)
        with torch.inference_mode():
            expected = {p: reference(served_lm, tokenizer, p, 24) for p in PROMPTS}
        for prompt, seq in zip(PROMPTS * 2, seqs, strict=True):
            assert seq.tokens == expected[prompt], prompt
    finally:
        e.stop()
