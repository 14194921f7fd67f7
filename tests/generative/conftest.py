"""A tiny causal language model for the generative tests: a byte-level BPE tokenizer trained on
CPython's help texts (pydoc_data, shipped with Python) and a 2-layer Llama with random weights
(≈ 240 k parameters), built once per session; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kit.tiny_lm import tiny_llama, train_tokenizer

os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    return train_tokenizer()


@pytest.fixture(scope="session")
def lm(tokenizer: Any) -> Any:
    return tiny_llama()


@pytest.fixture(scope="session")
def lm_folder(lm: Any, tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-llama")
    lm.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
