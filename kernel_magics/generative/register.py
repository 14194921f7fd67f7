"""Registering a causal language model and its tokenizer as a new version.

The version's MLflow folder holds ``MLmodel`` (flavor ``kernel_magics_transformers``, and
MLflow's ``transformers`` + ``python_function`` where MLflow can write them: ``mlflow_flavor.py``),
the model's ``save_pretrained`` files in ``hf/`` (``config.json``, ``generation_config.json``,
``model.safetensors``, never pickled weights) and the tokenizer's files in
``components/tokenizer/`` (MLflow's layout) or, where MLflow cannot, in ``hf/`` beside the model.
The folder's SHA-256 covers all of them, as for every version. Nothing is ever downloaded: the
model is an object in the notebook or a local folder.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from kernel_magics.errors import InvalidInput, first_line
from kernel_magics.generative.mlflow_flavor import TAG_MLFLOW_TRANSFORMERS, write_mlflow_layout
from kernel_magics.registration import RegisterResult
from kernel_magics.runs import create_version, mlflow_run, store_errors
from kernel_magics.store import TAG_FORMAT, TAG_SHA256, TAG_TASK, Store, hash_model_dir

FORMAT = "transformers"  # km.format of a generative version (the worker's loader, loader.py)
TASK = "text-generation"  # km.task
FLAVOR = "kernel_magics_transformers"
HF_DIR = "hf"  # the save_pretrained files inside the version's model folder
_PROBE_TEXT = "Hello"


def offline() -> None:
    """No hub access, ever: everything comes from a folder or an object."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def load_folder(
    folder: str | os.PathLike[str], tokenizer_folder: str | os.PathLike[str] | None = None
) -> tuple[Any, Any]:
    """A causal LM and its tokenizer from a local ``save_pretrained`` folder (the tokenizer
    from ``tokenizer_folder`` when it is saved apart, as in MLflow's layout)."""
    offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise InvalidInput(f"{path} is not a saved model folder (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_folder or path))
        model = AutoModelForCausalLM.from_pretrained(str(path))
    except Exception as err:
        raise InvalidInput(
            f"cannot load a causal language model from {path}: {first_line(err)}"
        ) from err
    return model.eval(), tokenizer


def check_pair(model: Any, tokenizer: Any) -> None:
    """A transformers causal LM with a generation head and a tokenizer, probed on one word."""
    offline()
    import torch
    from transformers import GenerationMixin, PreTrainedModel, PreTrainedTokenizerBase

    if not isinstance(model, PreTrainedModel) or not isinstance(model, GenerationMixin):
        raise InvalidInput(
            f"a generative model must be a transformers causal LM (AutoModelForCausalLM), "
            f"got {type(model).__name__}"
        )
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise InvalidInput(
            f"the tokenizer must be a transformers tokenizer (PreTrainedTokenizerFast, "
            f"AutoTokenizer), got {type(tokenizer).__name__}"
        )
    ids = tokenizer(_PROBE_TEXT, return_tensors="pt")["input_ids"]
    if ids.shape[-1] == 0:
        raise InvalidInput(f"the tokenizer gives no tokens for {_PROBE_TEXT!r}")
    try:
        with torch.inference_mode():
            logits = model.eval()(input_ids=ids).logits
    except Exception as err:
        raise InvalidInput(f"the model failed on {_PROBE_TEXT!r}: {first_line(err)}") from err
    if logits.shape[-1] < len(tokenizer):
        raise InvalidInput(
            f"the model scores {logits.shape[-1]} tokens but the tokenizer has {len(tokenizer)}"
        )


def write_folder(model: Any, tokenizer: Any, dest: Path) -> str:
    """``dest`` becomes an MLflow model folder holding safetensors, config and tokenizer, in
    MLflow's transformers layout where MLflow can write it (``mlflow_flavor.py``), else in our
    own (MLmodel + ``hf/`` with model and tokenizer). Returns the ``km.mlflow_transformers``
    tag: "yes", or "no: " and why MLflow's flavor cannot load this version."""
    import transformers

    conf = {
        "data": HF_DIR,
        "architecture": type(model).__name__,
        "transformers_version": transformers.__version__,
    }
    try:
        write_mlflow_layout(model, tokenizer, dest, hf_dir=HF_DIR, flavor=FLAVOR, conf=conf)
    except Exception as err:
        why = f"no: {first_line(err)}"
    else:
        _check_safetensors(dest / HF_DIR)
        return "yes"
    hf = dest / HF_DIR
    model.save_pretrained(str(hf), safe_serialization=True)
    tokenizer.save_pretrained(str(hf))
    _check_safetensors(hf)
    mlmodel = {"artifact_path": "model", "flavors": {FLAVOR: conf}}
    (dest / "MLmodel").write_text(yaml.safe_dump(mlmodel, sort_keys=False))
    return why


def _check_safetensors(hf: Path) -> None:
    if not any(hf.glob("*.safetensors")):
        raise InvalidInput("the model did not save safetensors weights")


def register_generative(
    store: Store,
    model: Any,
    tokenizer: Any,
    *,
    name: str,
    metrics: dict[str, float] | None = None,
    params: dict[str, Any] | None = None,
    recipe: str | None = None,
) -> RegisterResult:
    """Register ``model`` + ``tokenizer`` (objects, or ``model`` a folder and ``tokenizer``
    None) as the next version of ``name``. Everything is checked before a run exists."""
    import mlflow

    from kernel_magics.naming import validate_name
    from kernel_magics.registration import _check_metrics, _check_params

    validate_name(name)
    logged_metrics, logged_params = _check_metrics(metrics), _check_params(params)
    if isinstance(model, (str, os.PathLike)):
        if tokenizer is not None:
            raise InvalidInput("a model folder carries its tokenizer: drop --tokenizer")
        model, tokenizer = load_folder(model)
    elif tokenizer is None:
        raise InvalidInput("a language model needs its tokenizer (tokenizer=..., --tokenizer)")
    check_pair(model, tokenizer)
    tags = {TAG_TASK: TASK, TAG_FORMAT: FORMAT}
    notes: list[str] = []
    with store.tracking(), mlflow_run(store, f"{name}-register") as run:
        started = time.perf_counter()
        with store.write_lock(), store_errors("could not save the model to the store"):
            if logged_params:
                mlflow.log_params(logged_params)
            if logged_metrics:
                mlflow.log_metrics(logged_metrics)
            mlflow.set_tags({"km.model": name})
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / "model"
                mlflow_flavor = write_folder(model, tokenizer, folder)
                mlflow.log_artifacts(str(folder), artifact_path="model")
            uri = f"runs:/{run.info.run_id}/model"
            local = mlflow.artifacts.download_artifacts(uri)
            sha256 = hash_model_dir(local)
            tags[TAG_SHA256] = sha256
            tags[TAG_MLFLOW_TRANSFORMERS] = mlflow_flavor
            if mlflow_flavor != "yes":  # said, never silent: the tag keeps it on the version
                notes.append(
                    "MLflow's transformers flavor cannot load this version ("
                    + mlflow_flavor.removeprefix("no: ")
                    + "); the inference process serves it"
                )
            if recipe:
                tags["km.recipe"] = recipe
            info = _Logged(f"{run.info.artifact_uri}/model")
            version = create_version(store, name, info, run.info.run_id, tags)
    return RegisterResult(
        name=name,
        version=version,
        run_id=run.info.run_id,
        format=FORMAT,
        notes=notes,
        recipe=recipe or None,
        sha256=sha256,
        seconds=time.perf_counter() - started,
    )


class _Logged:
    """What ``create_version`` reads of a logged model: where its folder is."""

    model_id = None

    def __init__(self, model_uri: str) -> None:
        self.model_uri = model_uri
