"""``pickle``: MLflow's own pytorch format (``data/model.pth``, a whole pickled ``nn.Module``),
written when ``torch.export`` cannot trace a model.

Unpickling runs code, which is acceptable only because every folder is loaded after its
content hash was checked against the one recorded at registration (``verified.py``); request
bodies are never unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kernel_magics.formats.loaders import Graph, loader


@loader("pickle", "data/model.pth", flavor="pytorch")
def load_pickle(path: Path) -> Graph:
    """MLflow's pickle format: a whole ``nn.Module`` (classes travel by value)."""
    model = torch.load(path, map_location="cpu", weights_only=False)
    if hasattr(model, "eval"):
        model.eval()
    return Graph(model)
