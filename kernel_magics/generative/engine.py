"""Continuous batching for one loaded causal language model.

One engine thread per served version, with its own intra-op thread count (``threads``). Between
two decode steps it admits waiting requests (FIFO) while a slot is free and the KV-cache budget
holds their reservation (prompt + ``max_tokens``); the prompts waiting together are prefilled
by one forward into their slots, and those that arrive during it join it between two layers
(the direct forward) or make the next one, before any decode step; a prompt that starts as a
recent one did computes only the rest (``prefix_cache``, the direct forward). Then one forward
decodes one token for every running sequence (``cache.SlotCache``); a sequence leaves the
batch as soon as it ends (EOS, a stop string, ``max_tokens``, or its client gone) and its slot
is reused at the next step. The waiting queue is bounded: past it ``submit`` raises
``Overloaded`` (429 with Retry-After).

What a sampled token becomes for its request (text, the end, events handed over once per step)
is ``outputs.Outputs``'.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from typing import Any

import torch

from kernel_magics.errors import InvalidInput, Overloaded
from kernel_magics.generative import decode, model_forward
from kernel_magics.generative.cache import SlotCache
from kernel_magics.generative.outputs import Outputs
from kernel_magics.generative.prefix_cache import PrefixCache
from kernel_magics.generative.prompts import (
    PositionLogits,
    PromptBatch,
    SharedPrefill,
    prompt_batch,
)
from kernel_magics.generative.sampling import (
    choose,
    generator_for,
    logprobs_of,
    prompt_logprobs,
)
from kernel_magics.generative.sequence import Sequence

log = logging.getLogger(__name__)

# decode steps of up to this many rows have oneDNN's products set up at load (≈ 0.5 ms a matrix
# and row count here); beyond, a step sets up its own the first time
_SET_UP_ROWS = 64
# An engine thread idle this long ends, and the next request starts another. GNU OpenMP lets a
# team's threads spin between two parallel regions only while the process has no more OpenMP
# threads than cores, and an idle thread's team still counts: on 2 cores a second language
# model (the standby a swap keeps, another model) took a live one's single stream from 173 to
# 112 tokens/s, and undeploying it brought 186 back.
IDLE_EXIT_S = 2.0


class Engine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_running: int,
        kv_cache_tokens: int,
        max_queued: int,
        name: str = "",
        threads: int = 1,
        blocked: bool = False,
        prefix_cache_tokens: int = 0,
    ) -> None:
        config = model.config
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.threads = max(1, threads)
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 2048)
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        dtype = next(model.parameters()).dtype
        self.max_running, self.kv_cache_tokens, self.max_queued = (
            max_running,
            kv_cache_tokens,
            max_queued,
        )
        self.cache = SlotCache(config.num_hidden_layers, max_running, kv_heads, head_dim, dtype)
        self.outputs = Outputs(model, tokenizer)  # tokens into text and events for requests
        self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        # decode steps skip the model's module stack where its architecture is known
        supported = decode.supports(model)
        self.direct = decode.DirectDecoder(model, blocked=blocked) if supported else None
        if self.direct is not None:
            self.direct.set_up(min(max_running, _SET_UP_ROWS))
        # prompts kept for later ones that start the same way; the direct forward computes the
        # rest of a prompt after a cached start, the model's own forward does not
        self.prefixes = (
            PrefixCache(prefix_cache_tokens)
            if self.direct is not None and prefix_cache_tokens > 0
            else None
        )
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.reserved = 0  # cache tokens reserved by the running sequences
        self.cancelled = 0  # running sequences dropped because their client went away
        self.shared_prompts = 0  # prompts prefilled by another request's identical prompt
        self._wake = threading.Condition()
        self._stopped = False
        self._threads_set = threading.Event()
        self._thread: threading.Thread | None = None
        with self._wake:
            self._start_thread()

    # -- the owner's side (any thread) -------------------------------------------------------
    def check_length(self, prompt_tokens: int, max_tokens: int) -> None:
        if prompt_tokens == 0:
            raise InvalidInput("the prompt is empty")
        if prompt_tokens + max_tokens > self.context_length:
            raise InvalidInput(
                f"the prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) is over the "
                f"model's context length of {self.context_length} tokens"
            )
        if prompt_tokens + max_tokens > self.kv_cache_tokens:
            raise InvalidInput(
                f"the prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) is over the "
                f"KV-cache budget of {self.kv_cache_tokens} tokens (setting gen_kv_cache_tokens)"
            )

    def room(self, prompt_tokens: int) -> int:
        """The most tokens a prompt of this length can be completed with: the rest of the
        context, within the KV-cache budget (a sequence reserves prompt + ``max_tokens``)."""
        return min(self.context_length, self.kv_cache_tokens) - prompt_tokens

    def submit(self, *seqs: Sequence) -> None:
        """Queue ``seqs`` (one request's choices): all of them, or none (Overloaded)."""
        for seq in seqs:
            self.check_length(seq.prompt_tokens, seq.params.max_tokens)
        if len(seqs) > self.max_queued:
            raise InvalidInput(
                f"{len(seqs)} sequences in one request: over the {self.max_queued} the queue "
                "holds (setting gen_max_queued)"
            )
        now = time.perf_counter()
        for seq in seqs:
            seq.generator = generator_for(seq.params)
            seq.submitted = now
        with self._wake:
            if self._stopped:
                raise Overloaded(f"{self.name} is being unloaded; retry")
            if len(self.waiting) + len(seqs) > self.max_queued:
                raise Overloaded(
                    f"{self.name}: {len(self.running)} sequences running and {len(self.waiting)} "
                    "queued (the limit, setting gen_max_queued); retry later"
                )
            self.waiting.extend(seqs)
            if self._thread is None:  # it ended while idle (IDLE_EXIT_S)
                self._start_thread()
            self._wake.notify()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def describe(self) -> dict:
        return {
            "running": len(self.running),
            "queued": len(self.waiting),
            "max_running": self.max_running,
            "kv_cache_tokens": self.kv_cache_tokens,
            "kv_cache_reserved": self.reserved,
            "kv_cache_bytes": self.cache.bytes,
            "context_length": self.context_length,
            "generated_tokens": self.outputs.generated,
            "cancelled": self.cancelled,
            "shared_prompts": self.shared_prompts,
            **(self.prefixes.describe() if self.prefixes is not None else {}),
            "decode_path": self._decode_path(),
            "dtype": str(self.cache.dtype).removeprefix("torch."),
            "threads": self.threads,
        }

    def _decode_path(self) -> str:
        if self.direct is None:
            return "model"
        if self.direct.packed:
            return "direct, packed weights"
        return "direct, plain and blocked weights" if self.direct.blocked else "direct"

    # -- the engine thread -------------------------------------------------------------------
    def _start_thread(self) -> None:
        """The engine thread, with its own torch thread count (called holding ``_wake``)."""
        own_threads = torch.get_num_threads()
        self._threads_set.clear()
        self._thread = threading.Thread(target=self._run, name=f"generate-{self.name}", daemon=True)
        self._thread.start()
        self._threads_set.wait()
        # torch.set_num_threads also sets the count threads not yet using torch start with:
        # put back this thread's, so that the engine's stays the engine's own
        torch.set_num_threads(own_threads)

    def _run(self) -> None:
        # Torch's thread count is per thread (its OpenMP and MKL settings), set up on a thread's
        # first use from the process-wide count: set up first, then set the engine's own.
        torch.get_num_threads()
        torch.set_num_threads(self.threads)
        self._threads_set.set()
        while True:
            with self._wake:
                while not self.waiting and not self.running and not self._stopped:
                    if not self._wake.wait(IDLE_EXIT_S) and not self.waiting and not self._stopped:
                        self._thread = None  # its OpenMP team ends with it
                        return
                if self._stopped:
                    break
            try:
                with torch.inference_mode():
                    self._drop_cancelled()
                    self._admit()
                    if self.running:
                        self._decode()
            except Exception as err:  # a bug or the model failing: end every sequence, go on
                log.exception("%s: generation step failed", self.name)
                for seq in self.running:
                    self.outputs.finish(seq, f"error: {type(err).__name__}")
                self._retire()
            self.outputs.flush()
        for seq in list(self.waiting) + self.running:
            self.outputs.finish(seq, "abort")
        self.outputs.flush()

    def _drop_cancelled(self) -> None:
        if any(s.cancelled for s in self.waiting):
            with self._wake:
                self.waiting = deque(s for s in self.waiting if not s.cancelled)
        for seq in self.running:
            if seq.cancelled:
                seq.finish_reason = "cancelled"
                self.cancelled += 1
        self._retire()

    def _admit(self) -> None:
        """Prefill what waits before the next decode step: each group is every request waiting
        now (FIFO, while a slot is free and the KV-cache budget holds its reservation); the
        requests that arrive during a group's forward join it (``_prefill``) or, through the
        model's own forward, make the next group. Each group's first tokens go out before the
        next forward, and no decode step sits between two groups."""
        while True:
            group = self._take_group()
            if not group:
                return
            computed = self._prefill(group)
            self.outputs.flush()  # first tokens go out before the next forward
            self._keep_prompts(computed)
            self._retire()

    def _take_group(self) -> list[Sequence]:
        """The requests waiting now that fit (FIFO), moved into the running batch, with cache
        room made for their reservations."""
        group: list[Sequence] = []
        with self._wake:
            while self.waiting and len(self.running) < self.max_running:
                seq = self.waiting[0]
                if self.reserved + seq.reservation > self.kv_cache_tokens:
                    break  # FIFO: it waits for cache room rather than being overtaken
                self.waiting.popleft()
                self.reserved += seq.reservation
                seq.slot = len(self.running)
                self.running.append(seq)
                group.append(seq)
        if group:
            self.cache.reserve(max(s.reservation for s in self.running))
        return group

    def _prefill(self, group: list[Sequence]) -> list[Sequence]:
        """One forward over the new prompts, each written into its slot; a prompt sent by
        several requests is computed once (``prompts.SharedPrefill``). Where the direct forward
        runs, requests that arrive during it join it between two layers
        (``decode.DirectDecoder.prefill``) and get their first token with these. Returns the
        sequences whose prompts it computed (not those sharing one)."""
        cache = self.cache
        shared = SharedPrefill()
        batch = prompt_batch(self._cached_starts(shared.add(group)))

        def joining() -> PromptBatch | None:
            while arrivals := self._take_group():
                fresh = shared.add(arrivals)
                if fresh:
                    return prompt_batch(self._cached_starts(fresh))
            return None

        if self.direct is not None:
            prefilled = self.direct.prefill(batch, cache, joining)
        else:
            prefilled = model_forward.prefill(self.model, batch, cache, self._keeps_logits)
        self._score_prompts(shared, prefilled.positions)
        seqs, logits = shared.finish(prefilled.last, cache)
        self.shared_prompts += len(shared.copies)
        now = time.perf_counter()
        params = [s.params for s in seqs]
        tokens = choose(logits, params, [s.generator for s in seqs])
        logprobs = logprobs_of(logits, params, tokens)
        for seq, token, logprob in zip(seqs, tokens, logprobs, strict=True):
            seq.first_token_at = now
            self.outputs.append(seq, token, logprob)
        return shared.computed

    @staticmethod
    def _score_prompts(shared: SharedPrefill, positions: PositionLogits) -> None:
        """The prompts' own log-probabilities where a request wants them (``echo``), from
        the prefill's logits of their every position, in order; they go out with the first
        token's."""
        offset = 0
        for seq in shared.computed:
            if seq.params.scores_prompt:
                at = offset  # this prompt's first row among the scored positions

                def rows(start: int, end: int, at: int = at) -> torch.Tensor:
                    return positions(at + start, at + end)

                seq.logprobs[:0] = prompt_logprobs(rows, seq.prompt_ids, seq.params.logprobs or 0)
                offset += seq.prompt_tokens
        for source, copy in shared.copies:
            if copy.params.scores_prompt:
                copy.logprobs[:0] = source.logprobs

    def _cached_starts(self, seqs: list[Sequence]) -> list[Sequence]:
        """Each prompt's longest start kept by the prefix cache, copied into its slot; a
        prompt whose own log-probabilities are wanted is computed whole."""
        if self.prefixes is not None:
            for seq in seqs:
                if not seq.params.scores_prompt:
                    seq.cached = self.prefixes.load(seq.prompt_ids, self.cache, seq.slot)
        return seqs

    def _keep_prompts(self, seqs: list[Sequence]) -> None:
        """The prompts a prefill computed into the prefix cache, read from their slots (after
        their first tokens went out, before a slot can be reused)."""
        if self.prefixes is not None:
            for seq in seqs:
                self.prefixes.store(seq.prompt_ids, self.cache, seq.slot)

    def _keep_conversations(self) -> None:
        """Ended turns of a conversation (``Sequence.keep``) into the prefix cache, prompt and
        completion, before their slots are reused: the next turn's prompt starts with them. The
        last token is left out: it was sampled, never fed, so its keys are not in the slot."""
        if self.prefixes is None:
            return
        for seq in self.running:
            if seq.keep and seq.finish_reason in ("stop", "length"):
                self.prefixes.store(seq.prompt_ids + seq.tokens[:-1], self.cache, seq.slot)

    def _decode(self) -> None:
        running, cache = self.running, self.cache
        positions = [len(s.prompt_ids) + len(s.tokens) - 1 for s in running]
        kv_len = max(positions) + 1
        pos = torch.tensor(positions)
        cache.rows, cache.positions, cache.kv_len = len(running), pos, kv_len
        hidden = torch.arange(kv_len)[None, :] > pos[:, None]
        mask = torch.zeros(hidden.shape, dtype=cache.dtype).masked_fill_(
            hidden, torch.finfo(cache.dtype).min
        )[:, None, None, :]
        last = torch.tensor([s.tokens[-1] for s in running])
        if self.direct is not None:
            logits = self.direct.step(last, pos, mask, cache)
        else:
            logits = model_forward.step(self.model, last, pos, mask, cache)
        params = [s.params for s in running]
        tokens = choose(logits, params, [s.generator for s in running], [s.tokens for s in running])
        logprobs = logprobs_of(logits, params, tokens)
        for seq, token, logprob in zip(running, tokens, logprobs, strict=True):
            self.outputs.append(seq, token, logprob)
        self._retire()

    def _retire(self) -> None:
        """Take ended sequences out of the batch; the others move down to fill their slots."""
        if not any(s.finish_reason for s in self.running):
            return
        self._keep_conversations()
        kept: list[Sequence] = []
        for seq in self.running:
            if seq.finish_reason:
                self.reserved -= seq.reservation
                continue
            if seq.slot != len(kept):
                self.cache.move(seq.slot, len(kept), len(seq.prompt_ids) + len(seq.tokens))
                seq.slot = len(kept)
            kept.append(seq)
        self.running = kept
