"""What the engine and the loader read off a tokenizer (and the model's generation config):
the fast ``tokenizers`` backend, whether text can be decoded piece by piece, the end-of-text
ids."""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer


def fast_backend(tokenizer: Any) -> Tokenizer | None:
    """The ``tokenizers.Tokenizer`` behind a fast transformers tokenizer, else None."""
    backend = getattr(tokenizer, "_tokenizer", None)
    return backend if isinstance(backend, Tokenizer) else None


def stream_backend(tokenizer: Any) -> Tokenizer | None:
    """The backend of a fast tokenizer whose decoded text is the sum of its streamed pieces (no
    clean-up pass over the whole text), else None."""
    cleans_up = getattr(tokenizer, "clean_up_tokenization_spaces", False)
    return None if cleans_up else fast_backend(tokenizer)


def eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """Every id that ends a text: the generation config's, the model config's, the
    tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)
