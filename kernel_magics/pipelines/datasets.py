"""The bundled data sets the pipeline notebooks use, split the same way in every notebook.

scikit-learn ships them (no download): ``digits`` (8×8 images as 64 features in [0, 1], 10
classes), ``breast_cancer`` (30 standardized features, 2 classes), ``diabetes`` (10 features,
a regression target). ``load_split(name, "train" | "test", seed=...)`` returns float32 features
and the targets of a stratified (classification) split, so ``train.ipynb`` never sees the rows
``evaluate.ipynb`` and ``promote.ipynb`` score on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kernel_magics.errors import InvalidInput

if TYPE_CHECKING:
    import numpy as np

DATASETS = ("digits", "breast_cancer", "diabetes")
PARTS = ("train", "test")
TEST_SIZE = 0.25


def load_split(
    name: str, part: str, *, seed: int = 0, test_size: float = TEST_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) and targets of the ``part`` of data set ``name``."""
    import numpy as np
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    if name not in DATASETS:
        raise InvalidInput(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if part not in PARTS:
        raise InvalidInput(f"part must be 'train' or 'test', got {part!r}")
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    classification = name != "diabetes"
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=y if classification else None
    )
    if name == "digits":
        scale, shift = np.full(X.shape[1], 16.0), np.zeros(X.shape[1])
    else:  # standardized with the training part's statistics
        scale, shift = X_train.std(axis=0) + 1e-12, X_train.mean(axis=0)
    X_part, y_part = (X_train, y_train) if part == "train" else (X_test, y_test)
    features = ((X_part - shift) / scale).astype(np.float32)
    return features, (y_part if classification else y_part.astype(np.float32))
