"""``%register``: a model trained anywhere (a loop of one's own, a library, a file, a language
model's folder) becomes a new registered version through ``api.register``. Its result's view is
registered with ``%train``'s (``training.py``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any

from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from kernel_magics import api
from kernel_magics.errors import InvalidInput
from kernel_magics.frameworks.files import (
    MODEL_FILE_SUFFIXES,
    PICKLE_SUFFIXES,
    UnpicklingWarning,
    unpickling_message,
)
from kernel_magics.magics._args import FeatureMagics, View, front_end, word
from kernel_magics.registration import TASKS as REGISTER_TASKS
from kernel_magics.registration import RegisterResult


def _labels(tokens: list[str] | None) -> list | None:
    """``--classes 0 1 2`` → [0, 1, 2]; ``cat dog`` → ["cat", "dog"]; ``[0, 1]`` as JSON."""
    if tokens is None:
        return None
    if len(tokens) == 1 and word(tokens[0]).startswith("["):
        try:
            return json.loads(word(tokens[0]))
        except ValueError as err:
            raise InvalidInput(f"--classes is not a valid JSON list: {err}") from None
    labels = []
    for token in tokens:
        try:
            labels.append(json.loads(token))  # numbers and quoted strings
        except ValueError:
            labels.append(word(token))  # a bare word is a string label
    return labels


@magics_class
class RegistrationMagics(FeatureMagics):
    @line_magic
    @magic_arguments()
    @argument(
        "model",
        metavar="MODEL_EXPR|FILE|FOLDER",
        help="a trained nn.Module or scikit-learn model, a .onnx/.joblib/.pkl file, or a "
        "language model's save_pretrained folder",
    )
    @argument("--name", type=word, required=True, help="model name")
    @argument(
        "--example",
        metavar="EXPR",
        help="a few input rows in the dtype the model takes (array, tensor, DataFrame); "
        "required for a tensor model",
    )
    @argument(
        "--tokenizer",
        metavar="EXPR",
        help="a language model's tokenizer (with a transformers causal LM as MODEL_EXPR)",
    )
    @argument("--sample", metavar="EXPR", help="more rows to check a converted model's answers on")
    @argument(
        "--reference",
        metavar="EXPR",
        help="rows as clients send them (the training data): profiled for %%drift",
    )
    @argument("--task", choices=REGISTER_TASKS, help="what the outputs are (default: not said)")
    @argument(
        "--classes", nargs="+", metavar="LABEL", help="labels in output order: 0 1 2, or a list"
    )
    @argument("--metrics", metavar="JSON|EXPR", help="""'{"accuracy": 0.93}' or a dict name""")
    @argument("--params", metavar="JSON|EXPR", help="""'{"epochs": 3}' or a dict name""")
    @argument("--parent", type=word, metavar="NAME@V", help="the version it was derived from")
    @argument("--recipe", nargs="+", metavar="TEXT", help="how it was made, in a few words")
    @front_end
    def register(self, args: argparse.Namespace) -> RegisterResult:
        """Register a model trained anywhere (your own loop, a library) as a new version.

        MODEL_EXPR and --example are evaluated in the notebook's namespace. One MLflow run
        records the metrics and params; the model is exported like a %train result (pt2 in eval
        mode, or MLflow's pickle format with the reason said) and tagged with its content hash,
        task, classes, parent and recipe. %deploy, %predict and %rollback then treat it like
        any other version.

        A fitted scikit-learn estimator or Pipeline is converted to ONNX and checked against
        its own answers on --example and --sample (or served by the estimator itself, with the
        reason said); a .onnx file registers as it is; a .joblib/.pkl file is unpickled here
        first (it runs the file's code: a warning says so). Their task and classes come from
        the model.

        Examples::

            r = %register net --name digits-own --example X[:5] --task classification
            %register clf --name digits-sk --example X[:2] --sample X[:200]
            %register model.onnx --name exported
            %register model.joblib --name saved --example X[:2]
            %register net --name digits-own --example X[:5] --metrics '{"accuracy": 0.95}'
            %register net --name digits-ft --example X[:5] --parent digits@1 --recipe 'lr 1e-4'
            %register clf --name churn --example X[:2] --reference X_train

        --reference X keeps a profile of X (per-feature histograms and statistics) and of the
        model's predictions on it with the version, inside its hash, for %drift.

        A language model (a transformers causal LM and its tokenizer, or a folder saved with
        save_pretrained) is stored as safetensors, config and tokenizer files and served by
        /v1/completions, /v1/chat/completions and %generate::

            %register lm --tokenizer tok --name tiny-lm
            %register ./my-model-folder --name tiny-lm
        """
        km = self.kernel_magics
        typed = word(args.model)
        folder = os.path.expanduser(typed)
        if args.tokenizer is None and args.example is None and os.path.isdir(folder):
            model: Any = folder  # a save_pretrained folder (or an MLflow model folder)
        else:
            model = self._model(typed)
        if args.tokenizer is not None or api.is_generative(model):
            return api.register(
                model,
                tokenizer=None
                if args.tokenizer is None
                else km._eval(args.tokenizer, "--tokenizer"),
                name=args.name,
                metrics=self._mapping(args.metrics, "--metrics"),
                params=self._mapping(args.params, "--params"),
                recipe=" ".join(map(word, args.recipe)) if args.recipe else None,
                settings=km.settings(),
            )
        example, sample, reference = (
            None if text is None else km._eval(text, what)
            for text, what in (
                (args.example, "the example"),
                (args.sample, "the sample"),
                (args.reference, "the reference"),
            )
        )
        with warnings.catch_warnings():
            if isinstance(model, str) and model.lower().endswith(PICKLE_SUFFIXES):
                print(f"warning: {unpickling_message(model)}", file=sys.stderr)  # one line
                warnings.simplefilter("ignore", UnpicklingWarning)
            return self._register(model, example, sample, reference, args)

    def _register(
        self, model: Any, example: Any, sample: Any, reference: Any, args: argparse.Namespace
    ) -> RegisterResult:
        return api.register(
            model,
            example,
            sample=sample,
            reference=reference,
            name=args.name,
            task=args.task,
            classes=_labels(args.classes),
            metrics=self._mapping(args.metrics, "--metrics"),
            params=self._mapping(args.params, "--params"),
            parent=args.parent,
            recipe=" ".join(map(word, args.recipe)) if args.recipe else None,
            settings=self.kernel_magics.settings(),
        )

    def _model(self, text: str) -> Any:
        """A model file by its name (``model.onnx``, ``model.pkl``), else an expression."""
        if text.lower().endswith(MODEL_FILE_SUFFIXES):
            return text
        return self.kernel_magics._eval(text, "the model")

    def _mapping(self, text: str | None, option: str) -> Any:
        """A JSON object, or an expression of the namespace (a dict)."""
        if text is None:
            return None
        text = word(text)
        if text.startswith("{"):
            try:
                return json.loads(text)
            except ValueError as err:
                raise InvalidInput(f"{option} is not valid JSON: {err}") from None
        return self.kernel_magics._eval(text, option)


MAGICS = RegistrationMagics

VIEWS: list[View] = []  # RegisterResult's view: with TrainResult's in training.py
