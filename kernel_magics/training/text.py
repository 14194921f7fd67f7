"""Training a causal language model on a text: ``api.train(model, text=..., tokenizer=...)``.

The corpus is tokenized once and cut into blocks of ``block_size + 1`` tokens that overlap by
one, so each block gives ``block_size`` inputs and the ``block_size`` next tokens as labels and
every token of the corpus is predicted once. The blocks are split (seeded) into training and
held-out rows, and the usual loop trains on them (``fit``: the same optimizer, seeding,
progress reporters and widget, Stop and interrupt handling): the model's logits
(rows, positions, vocabulary) against the labels (rows, positions) are a per-position
classification for the built-in cross-entropy. ``PreparedData.language_model`` makes the
per-epoch metrics perplexity (exp of the held-out loss) and next-token accuracy instead of
per-class scores. The run (``tracking.run_training``) then registers the model and its
tokenizer as a generative version (``generative/register.py``), inside the training run, so the
version carries the run's metrics.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from kernel_magics.errors import InvalidInput
from kernel_magics.training.data import PreparedData

if TYPE_CHECKING:
    from kernel_magics.registration import RegisterResult
    from kernel_magics.store import Store
    from kernel_magics.tracking import TrainResult
    from kernel_magics.training.config import TrainConfig

# A str this short without a newline that names a file is read from it; anything else is the
# corpus itself.
_PATH_MAX = 4096


class CausalLMLogits(torch.nn.Module):
    """The model as ``fit`` calls it: token ids (rows, positions) in, logits out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.lm = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=ids, use_cache=False).logits  # type: ignore[no-any-return]


def read_corpus(text: Any) -> str:
    """The corpus: ``text`` itself, or the file it names (a path object, or a short one-line
    string naming an existing file)."""
    if isinstance(text, os.PathLike) or (
        isinstance(text, str) and len(text) < _PATH_MAX and "\n" not in text and text.strip()
    ):
        path = Path(text).expanduser()
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise InvalidInput(f"cannot read the corpus {path}: {err}") from None
        if isinstance(text, os.PathLike):
            raise InvalidInput(f"the corpus file {path} does not exist")
    if not isinstance(text, str):
        raise InvalidInput(f"text must be a string or a file path, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInput("the text is empty")
    return text


def text_blocks(text: str, tokenizer: Any, block_size: int) -> torch.Tensor:
    """(blocks, block_size + 1) token ids: consecutive windows overlapping by one token."""
    ids = tokenizer(text, verbose=False)["input_ids"]
    step = block_size
    count = (len(ids) - 1) // step
    if count < 2:
        raise InvalidInput(
            f"the text is {len(ids)} tokens: fewer than 2 blocks of {block_size} "
            "(a longer text or a smaller block size)"
        )
    tensor = torch.tensor(ids[: count * step + 1], dtype=torch.long)
    return tensor.unfold(0, block_size + 1, step)


def text_data(
    text: Any, tokenizer: Any, model: Any, block_size: int, config: TrainConfig
) -> PreparedData:
    """The blocks of ``text`` as training and held-out rows (seeded split, at least one
    held-out block when ``config.val_split`` > 0)."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 2:
        raise InvalidInput(f"block_size must be a whole number ≥ 2, got {block_size!r}")
    context = getattr(model.config, "max_position_embeddings", None)
    if context and block_size > context:
        raise InvalidInput(
            f"block_size {block_size} is over the model's context length of {context} tokens"
        )
    blocks = text_blocks(read_corpus(text), tokenizer, block_size)
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(config.seed))
    held_out = math.ceil(config.val_split * len(blocks)) if config.val_split > 0 else 0
    held_out = min(held_out, len(blocks) - 1)
    train, val = blocks[order[held_out:]], blocks[order[:held_out]]
    vocab = int(model.config.vocab_size)
    return PreparedData(
        X_train=train[:, :-1].contiguous(),
        y_train=train[:, 1:].contiguous(),
        X_val=val[:, :-1].contiguous(),
        y_val=val[:, 1:].contiguous(),
        task="classification",  # of the next token, at every position
        n_features=block_size,
        n_outputs=vocab,
        classes=None,
        feature_names=None,
        input_example=np.asarray(train[:1, :-1]),
        metrics_on="validation" if held_out else "train",
        row_shape=(block_size,),
        language_model=True,
    )


def train_text(
    store: Store,
    model: Any,
    tokenizer: Any,
    text: Any,
    *,
    name: str,
    block_size: int,
    config: TrainConfig,
    progress: Any,
) -> TrainResult:
    """Train ``model`` on ``text`` and register it with ``tokenizer`` as the next version of
    ``name`` (see the module)."""
    from kernel_magics.generative.register import check_pair, register_generative
    from kernel_magics.tracking import run_training
    from kernel_magics.training.fit import fit

    if tokenizer is None:
        raise InvalidInput("training on text needs the tokenizer (tokenizer=..., --tokenizer)")
    check_pair(model, tokenizer)  # a causal LM that runs on the tokenizer's ids
    if config.nproc > 1 or config.nnodes > 1:
        raise InvalidInput("training on text runs in this process: drop --nproc/--nnodes")
    data = text_data(text, tokenizer, model, block_size, config)
    net = CausalLMLogits(model)

    def fit_fn(on_epoch: Any) -> Any:
        return fit(net, data, config, on_epoch=on_epoch, progress=progress, title=name)

    def register(_: Any, __: PreparedData) -> tuple[Any, RegisterResult]:
        model.eval()
        return model, register_generative(store, model, tokenizer, name=name)

    params = {
        "task": "text-generation",
        "block_size": block_size,
        "train_blocks": len(data.X_train),
        "held_out_blocks": len(data.X_val),
        "tokenizer_vocab": len(tokenizer),
    }
    return run_training(
        store, name, model, data, config, fit_fn, register=register, extra_params=params
    )
