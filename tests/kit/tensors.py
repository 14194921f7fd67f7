"""Small real models of every input kind the inference process serves (tensors of rank 2-4;
float32, int64 and bool inputs) and inputs for them, shared by the serving tests."""

from __future__ import annotations

import numpy as np
import torch


class ConvNet(torch.nn.Module):
    """N×1×8×8 images → N×10 logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.conv = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)
        )
        self.head = torch.nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(1))


class LSTMRegressor(torch.nn.Module):
    """N×T×F sequences → N×3 (from the last step)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(12)
        self.rnn = torch.nn.LSTM(5, 16, batch_first=True)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class GRUTagger(torch.nn.Module):
    """N×T×F sequences → N×T×4: an output of rank 3."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(13)
        self.rnn = torch.nn.GRU(5, 8, batch_first=True)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out)


VOCAB, TOKENS = 100, 12


class BagOfEmbeddings(torch.nn.Module):
    """N×12 int64 token ids → N×2."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(14)
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x).mean(1))


class TinyEncoder(torch.nn.Module):
    """Token ids of any length → N×2: embeddings, one transformer layer, mean over positions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(15)
        self.embed = torch.nn.Embedding(VOCAB, 16)
        self.position = torch.nn.Embedding(64, 16)
        self.layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = torch.nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(x.shape[1], device=x.device)
        return self.head(self.layer(self.embed(x) + self.position(steps)).mean(1))


class TinyGRU(torch.nn.Module):
    """Token ids → N×2 through a GRU (torch.export unrolls it: the length stays fixed)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(16)
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.gru = torch.nn.GRU(8, 8, batch_first=True)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embed(x))
        return self.head(out[:, -1])


def token_rows(n: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, (n, length)).astype(np.int64)


class MaskScorer(torch.nn.Module):
    """N×6 booleans → N×1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(15)
        self.head = torch.nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.float())


def inputs(name: str, n: int, seed: int) -> np.ndarray:
    """``n`` rows for the model registered as ``name`` (a key of ``MODELS``)."""
    rng = np.random.default_rng(seed)
    if name == "conv":
        return rng.random((n, 1, 8, 8), dtype=np.float32)
    if name in ("lstm", "gru"):
        return rng.standard_normal((n, 7, 5)).astype(np.float32)
    if name == "tokens":
        return rng.integers(0, VOCAB, (n, TOKENS))
    return rng.random((n, 6)) > 0.5


# the name each model is registered under → (its class, its task)
MODELS = {
    "conv": (ConvNet, "classification"),
    "lstm": (LSTMRegressor, "regression"),
    "gru": (GRUTagger, "other"),
    "tokens": (BagOfEmbeddings, "classification"),
    "mask": (MaskScorer, "regression"),
}
