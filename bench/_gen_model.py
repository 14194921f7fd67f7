"""The benchmark's language models: the notebook's 4.2 M-parameter Llama and a ≈ 30 M one, both
with random weights (seed 0) and the BPE tokenizer of the notebook (vocab 2048, trained on
CPython's ``pydoc_data`` help texts). Random weights are enough for throughput: the work per token
does not depend on the values (greedy, a fixed number of new tokens, EOS ignored by the count)."""

from __future__ import annotations

from pathlib import Path

# the prompts every generation benchmark sends (greedy: the same text each time)
PROMPTS = [
    "The for statement is used to iterate over",
    "Objects are Python's abstraction for data",
    "A class definition defines a class object",
    "Exceptions are raised when",
]

# name -> LlamaConfig arguments beside the shared ones (vocab 2048, context 512)
SIZES: dict[str, dict[str, int]] = {
    "4m": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
           "num_attention_heads": 4},
    "30m": {"hidden_size": 512, "intermediate_size": 1536, "num_hidden_layers": 8,
            "num_attention_heads": 8},
}  # fmt: skip


def train_tokenizer() -> object:
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(list(topics.values()), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")


def build_model(folder: Path, size: str = "4m") -> int:
    """Model and tokenizer saved into ``folder``; returns the number of parameters."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = train_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
        **SIZES[size],
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))  # type: ignore[attr-defined]
    return sum(p.numel() for p in model.parameters())


def kv_bytes_per_token(folder: Path, dtype: str) -> int:
    """KV-cache bytes one token takes in the model of ``folder`` served in ``dtype``."""
    import torch
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(str(folder))
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    size = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    return int(c.num_hidden_layers * 2 * kv_heads * head_dim * size)
