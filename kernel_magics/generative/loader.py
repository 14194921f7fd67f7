"""The inference process's loader of the ``transformers`` format (registered in
``formats/loaders.py``'s ``FORMAT_MODULES``): the model from the version's ``hf/`` folder and
its tokenizer (``components/tokenizer/`` in MLflow's layout, else ``hf/``), and its
continuous-batching engine sized by the settings."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenizers.decoders import DecodeStream

from kernel_magics.config import GEN_DTYPES, GEN_LARGE_WEIGHTS_BYTES, Settings, load_settings
from kernel_magics.errors import InvalidInput
from kernel_magics.formats.loaders import Graph, loader
from kernel_magics.generative.engine import Engine
from kernel_magics.generative.mlflow_flavor import tokenizer_dir
from kernel_magics.generative.register import FLAVOR, FORMAT, HF_DIR, load_folder
from kernel_magics.generative.sampling import SamplingParams
from kernel_magics.generative.sequence import Sequence
from kernel_magics.generative.tokens import fast_backend, stream_backend

# Used when the tokenizer has no chat template (documented in docs/generative.md).
PLAIN_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
_ROLES = ("system", "user", "assistant", "developer", "tool")


class Generator:
    """A loaded language model: its tokenizer, its engine, prompt preparation."""

    def __init__(self, model: Any, tokenizer: Any, settings: Settings, name: str) -> None:
        self.model, self.tokenizer = model, tokenizer
        self._backend = fast_backend(tokenizer)
        self._token_texts: dict[int, str] = {}
        self.engine = Engine(
            model,
            tokenizer,
            threads=engine_threads(settings, model),
            blocked=blocked_copy(settings, model),
            prefix_cache_tokens=settings.gen_prefix_cache_tokens,
            max_running=settings.gen_max_running,
            kv_cache_tokens=settings.gen_kv_cache_tokens,
            max_queued=settings.gen_max_queued,
            name=name,
        )

    def encode(self, prompt: str) -> list[int]:
        """The prompt's token ids, special tokens included as the tokenizer adds them; through
        its ``tokenizers`` backend where it has one (a third of the wrapper's time, measured)."""
        if self._backend is not None:
            return list(self._backend.encode(prompt).ids)
        return list(self.tokenizer(prompt)["input_ids"])

    def token_text(self, token: int) -> str:
        """One token's text, decoded alone (the log-probabilities' ``token``); kept once
        decoded."""
        text = self._token_texts.get(token)
        if text is None:
            text = self._token_texts[token] = str(self.tokenizer.decode([token]))
        return text

    def pieces(self) -> Callable[[int], str]:
        """A fresh incremental decoder (``logprobs.Vocabulary.pieces``): the streaming decoder
        where the tokenizer has one (as the engine decodes completions), else a decode of all
        tokens so far, less what was already returned."""
        backend = stream_backend(self.tokenizer)
        if backend is not None:
            stream = DecodeStream(skip_special_tokens=True)
            return lambda token: stream.step(backend, token) or ""
        tokens: list[int] = []
        done = [""]

        def piece(token: int) -> str:
            tokens.append(token)
            text = self.text(tokens)
            if text.endswith("\ufffd") or not text.startswith(done[0]):
                return ""  # an incomplete character, or a decode that rewrote the text so far
            new, done[0] = text[len(done[0]) :], text
            return new

        return piece

    def text(self, tokens: list[int]) -> str:
        """Token ids as text (an echoed prompt), special tokens left out."""
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def chat_prompt(self, messages: Any) -> str:
        """The chat as one prompt: the tokenizer's chat template, else ``PLAIN_CHAT_TEMPLATE``."""
        if not isinstance(messages, list) or not messages:
            raise InvalidInput("messages must be a non-empty list of {role, content} objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in _ROLES:
                raise InvalidInput(f"messages[{i}] needs a role among {', '.join(_ROLES)}")
            if not isinstance(m.get("content"), str):
                raise InvalidInput(f"messages[{i}].content must be text")
        template = getattr(self.tokenizer, "chat_template", None) or PLAIN_CHAT_TEMPLATE
        return str(
            self.tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=True
            )
        )

    def warm(self) -> float:
        """One short greedy generation through the engine; a failure fails the deploy."""
        import threading

        started = time.perf_counter()
        done = threading.Event()
        failed: list[str] = []

        def on_event(seq: Sequence, delta: str, finish: str | None, *_: Any) -> None:
            if finish is not None:
                if finish.startswith("error"):
                    failed.append(finish)
                done.set()

        ids = self.encode("Hello") or [0]
        self.engine.submit(Sequence(ids, SamplingParams(max_tokens=2, temperature=0.0), on_event))
        if not done.wait(120) or failed:
            raise RuntimeError(f"warm-up generation failed ({failed[0] if failed else 'timeout'})")
        return (time.perf_counter() - started) * 1000

    def close(self) -> None:
        self.engine.stop()

    def describe(self) -> dict:
        return {"generation": self.engine.describe()}


def _large(model: Any) -> bool:
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights >= GEN_LARGE_WEIGHTS_BYTES


def engine_threads(settings: Settings, model: Any) -> int:
    """The intra-op threads of ``model``'s engine: ``gen_threads``, or where it is 0, every
    usable core for weights of ``GEN_LARGE_WEIGHTS_BYTES`` or more, else ``torch_threads``."""
    if settings.gen_threads > 0:
        return settings.gen_threads
    if not _large(model):
        return max(1, settings.torch_threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def blocked_copy(settings: Settings, model: Any) -> bool:
    """Whether ``model``'s engine keeps a blocked copy of its weights (``gen_blocked_weights``:
    float32 weights of ``GEN_LARGE_WEIGHTS_BYTES`` or more)."""
    import torch

    if not settings.gen_blocked_weights:
        return False
    return next(model.parameters()).dtype == torch.float32 and _large(model)


def served_dtype(setting: str) -> Any:
    """The ``torch.dtype`` the ``gen_dtype`` setting asks for; None keeps the checkpoint's."""
    import torch

    value = setting.strip().lower()
    if value not in GEN_DTYPES:
        raise InvalidInput(f"gen_dtype must be one of {', '.join(GEN_DTYPES)}, got {setting!r}")
    return None if value == "auto" else getattr(torch, value)


def _refuse(_: Any) -> Any:
    raise InvalidInput("a generative model answers /v1/completions and /v1/chat/completions")


@loader(FORMAT, f"{HF_DIR}/config.json", flavor=FLAVOR, takes_tensors=False)
def load_transformers(path: Path) -> Graph:
    import torch

    settings = load_settings()
    torch.set_num_threads(max(1, settings.torch_threads))
    dtype = served_dtype(settings.gen_dtype)
    model, tokenizer = load_folder(path.parent, tokenizer_dir(path.parent.parent, HF_DIR))
    if dtype is not None:
        model = model.to(dtype)
    return Graph(_refuse, generator=Generator(model, tokenizer, settings, path.parent.parent.name))
