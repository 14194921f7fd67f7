"""A scikit-learn model on the ray target: the estimator served itself (the ``sklearn`` format,
where ONNX would change a tree's answers) and the same name's next version converted to ONNX,
both loaded by the replicas through the ``formats`` registry the inference process uses;
deploy → the estimator's own answers, its labels (``?labels=true`` and ``/invocations`` as
``mlflow models serve`` answers) → hot swap to the ONNX version → rollback to the estimator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import requests
from kit.ray_head import RayHead, ray_settings, url
from sklearn.ensemble import RandomForestClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from kernel_magics import api
from kernel_magics.config import Settings


@pytest.fixture(scope="module")
def settings(km_home: Path, ray_head: RayHead) -> Settings:
    return ray_settings(km_home, ray_head)


def test_a_scikit_learn_version_deploys_swaps_and_rolls_back_on_ray(
    settings: Settings, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = digits[0][:300], digits[1][:300]
    forest = make_pipeline(StandardScaler(), RandomForestClassifier(10, random_state=0)).fit(X, y)
    mlp = MLPClassifier((16,), max_iter=200, random_state=0).fit(X, y)
    assert api.register(forest, X[:2], name="sk", sample=X, settings=settings).format == "sklearn"
    assert api.register(mlp, X[:2], name="sk", sample=X[:50], settings=settings).format == "onnx"
    rows = X[:20]  # float32 holds these exactly; the estimator takes them as float64
    labels = [int(label) for label in forest.predict(rows)]

    def served_by_the_estimator() -> None:
        raw = api.predict("sk", rows, raw=True, settings=settings)
        assert np.array_equal(raw, forest.predict_proba(rows.astype(np.float64)))
        body = {"instances": rows.tolist()}
        r = requests.post(url(settings, "sk", ":predict?labels=true"), json=body, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["labels"] == labels
        r = requests.post(
            url(settings, "sk", "/invocations"), json={"inputs": rows.tolist()}, timeout=30
        )
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == labels  # the sklearn flavor's predict

    assert api.deploy("sk@1", settings=settings).version == 1
    served_by_the_estimator()

    swap = api.deploy("sk@2", settings=settings)
    assert (swap.version, swap.previous_version) == (2, 1)
    converted = api.predict("sk", rows, raw=True, settings=settings)
    np.testing.assert_allclose(converted, mlp.predict_proba(rows), rtol=1e-5, atol=1e-6)

    back = api.rollback("sk", settings=settings)
    assert (back.version, back.previous_version, back.reused) == (1, 2, True)
    served_by_the_estimator()
    assert api.undeploy("sk", settings=settings).previous_version == 1
