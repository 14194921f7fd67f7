"""A generative version's folder written in MLflow's own ``transformers`` layout, so that
``mlflow.transformers.load_model(uri)``, ``mlflow.pyfunc.load_model(uri)`` and
``mlflow models serve`` load the same files the inference process loads — one copy of the
weights.

MLflow's ``save_model(..., save_pretrained=True)`` writes the weights and config in ``model/``
(the flavor's ``model_binary``), the tokenizer in ``components/tokenizer/`` (a fixed path), the
``MLmodel`` with the ``transformers`` and ``python_function`` flavors, and its environment files.
Here ``model/`` is renamed ``hf/`` (``model_binary: hf``: MLflow reads the folder that key names)
so the inference process's format marker ``hf/config.json`` stays what it was, and our flavor is
added beside MLflow's, naming both folders. Where MLflow cannot write or reload the pair, the
caller writes its own layout (``hf/`` holding model and tokenizer) and records the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

# km tag on every generative version: "yes", or "no: <why MLflow's flavor cannot load it>"
TAG_MLFLOW_TRANSFORMERS = "km.mlflow_transformers"
TOKENIZER_DIR = "components/tokenizer"  # where MLflow's transformers flavor reads a tokenizer
_MLFLOW_MODEL_DIR = "model"  # MLflow's default model_binary, renamed to our HF_DIR
# Sampling parameters a pyfunc caller may pass (``predict(..., params=...)``); MLflow drops
# any parameter the signature does not declare. Defaults: greedy, our /v1 default length.
_PARAMS = {"max_new_tokens": 16, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 50}


def write_mlflow_layout(
    model: Any, tokenizer: Any, dest: Path, *, hf_dir: str, flavor: str, conf: dict
) -> None:
    """``dest`` becomes a folder that MLflow's transformers flavor loads and that our ``flavor``
    (``conf``, completed here with where the tokenizer is) loads too. Raises whatever MLflow
    raised; ``dest`` is then removed."""
    import logging

    import mlflow
    import torch
    import transformers
    from mlflow.models import infer_signature

    # MLflow looks for a model card and a licence on the hub (never reachable: offline) and
    # warns on every registration that it found none.
    mlflow_log = logging.getLogger("mlflow.transformers")
    level = mlflow_log.level
    mlflow_log.setLevel(logging.ERROR)
    try:
        mlflow.transformers.save_model(
            {"model": model, "tokenizer": tokenizer},
            str(dest),
            task="text-generation",
            signature=infer_signature("prompt", "text", params=dict(_PARAMS)),
            # explicit: inferring them imports every installed package's model code
            pip_requirements=[
                f"transformers=={transformers.__version__}",
                f"torch=={torch.__version__.split('+')[0]}",
            ],
        )
        (dest / _MLFLOW_MODEL_DIR).rename(dest / hf_dir)
        mlmodel_path = dest / "MLmodel"
        mlmodel = yaml.safe_load(mlmodel_path.read_text())
        flavors = mlmodel["flavors"]
        flavors["transformers"]["model_binary"] = hf_dir
        _check_tokenizer_class(flavors["transformers"])
        flavors[flavor] = {**conf, "tokenizer": TOKENIZER_DIR}
        mlmodel_path.write_text(yaml.safe_dump(mlmodel, sort_keys=False))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    finally:
        mlflow_log.setLevel(level)


def _check_tokenizer_class(conf: dict) -> None:
    """MLflow rebuilds the tokenizer from the class it recorded (``tokenizer_type``), looked up
    in ``transformers``: a tokenizer class from elsewhere cannot be rebuilt."""
    import transformers

    name = conf.get("tokenizer_type")
    if name and not hasattr(transformers, name):
        raise ValueError(f"MLflow cannot rebuild a {name} tokenizer (not a transformers class)")


def tokenizer_dir(model_folder: Path, hf_dir: str) -> Path:
    """Where a version's tokenizer is: ``components/tokenizer/`` in MLflow's layout, else with
    the weights in ``hf/`` (versions registered before that layout, or where MLflow could not)."""
    mlflow_dir = model_folder / TOKENIZER_DIR
    return mlflow_dir if mlflow_dir.is_dir() else model_folder / hf_dir
