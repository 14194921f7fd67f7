"""``sklearn``: scikit-learn versions that skl2onnx could not convert, or whose converted graph
answered differently (``frameworks/sklearn_models.py`` says why at registration and records
it as ``km.conversion``). The estimator is MLflow's sklearn flavor (``model.pkl``, cloudpickle),
unpickled in the worker like the torch pickle format: a classifier answers its class
probabilities, a regressor its predictions as (rows, targets).

scikit-learn is imported only when such a version loads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kernel_magics.formats.loaders import Graph, loader


@loader("sklearn", "model.pkl", flavor="sklearn")
def load_sklearn(path: Path) -> Graph:
    import cloudpickle
    from sklearn.base import is_classifier

    with path.open("rb") as file:
        model = cloudpickle.load(file)
    answer = model.predict_proba if is_classifier(model) else model.predict

    def forward(x: torch.Tensor) -> torch.Tensor:
        rows = x.numpy()
        return torch.from_numpy(np.asarray(answer(rows), dtype=np.float64).reshape(len(rows), -1))

    return Graph(forward)
