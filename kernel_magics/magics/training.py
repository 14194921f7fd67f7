"""``%train``: a model trained here becomes a new registered version.

``%train`` builds a ``TrainConfig`` from its options (named like its fields) and calls
``api.train``; ``%register`` (``registration.py``) brings in a model trained anywhere. The views
of both records are registered here. Settings and expression evaluation are ``KernelMagics``'
(``%config KernelMagics.<option>``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, kwds, magic_arguments

from kernel_magics import api, display
from kernel_magics.argtypes import non_negative_float, number, positive_int
from kernel_magics.errors import TrainingInterrupted
from kernel_magics.magics._args import FeatureMagics, View, front_end, word
from kernel_magics.magics._results import training_stopped
from kernel_magics.preprocess import ENCODINGS, SCALES
from kernel_magics.tracking import TrainResult
from kernel_magics.training.config import LOSS_TASKS, OPTIMIZERS, TrainConfig, check_loss
from kernel_magics.training.config import TASKS as TRAIN_TASKS
from kernel_magics.training.progress import make_progress

_TRAIN_USAGE_FORMAT = (
    "train MODEL_EXPR --data X_EXPR [Y_EXPR] [--target COLUMN] [--name NAME]\n"
    "       MODEL_EXPR --text CORPUS --tokenizer TOK_EXPR [--block-size T] [--name NAME]\n"
    "             [--epochs N] [--lr LR] [--batch-size N] [--optimizer {%s}]\n"
    "             [--weight-decay WD] [--val-split FRACTION] [--seed SEED]\n"
    "             [--task {%s}] [--loss LOSS]\n"
    "             [--scale {standard,minmax,none}] [--encode onehot]\n"
    "             [--nproc N [--nnodes M --rdzv-endpoint HOST:PORT]]"
)
_TRAIN_USAGE = _TRAIN_USAGE_FORMAT % (",".join(OPTIMIZERS), ",".join(TRAIN_TASKS))
_TRAIN = TrainConfig()
_POSITIVE_FLOAT = number(float, 0, inclusive=False)


def _lower_word(text: str) -> str:
    return word(text).lower()


@magics_class
class TrainingMagics(FeatureMagics):
    _trained_once = False  # the first %train of a kernel pays a one-time warm-up

    # -- training ---------------------------------------------------------------------------------
    # Ranges are checked while parsing where a bad value would otherwise only fail after an
    # MLflow run was opened; val-split's bounds are the training code's to decide. Defaults are
    # TrainConfig's, and the options are named like its fields (the magic builds it from them).
    @line_magic
    @magic_arguments()
    @kwds(usage=_TRAIN_USAGE)  # MODEL_EXPR first, as every example writes it
    @argument("model", metavar="MODEL_EXPR", help="an nn.Module expression: Net(), model")
    @argument("--data", nargs="+", metavar="EXPR", help="X_EXPR [Y_EXPR]")
    @argument(
        "--text",
        metavar="CORPUS",
        help="a causal LM's corpus instead of --data: a str expression or a file path",
    )
    @argument("--tokenizer", metavar="TOK_EXPR", help="the tokenizer of --text's language model")
    @argument(
        "--block-size",
        type=positive_int,
        default=128,
        help="tokens per training row with --text; default %(default)s",
    )
    @argument("--target", type=word, help="target column of a DataFrame X (instead of Y_EXPR)")
    @argument("--name", type=word, help="model name (default: class name, lowercased)")
    @argument("--epochs", type=positive_int, default=_TRAIN.epochs, help="default: %(default)s")
    @argument(
        "--lr", type=_POSITIVE_FLOAT, default=_TRAIN.lr, help="learning rate, default %(default)s"
    )
    @argument(
        "--batch-size", type=positive_int, default=_TRAIN.batch_size, help="default: %(default)s"
    )
    @argument(
        "--optimizer",
        type=_lower_word,
        choices=OPTIMIZERS,
        default=_TRAIN.optimizer,
        help="default: %(default)s",
    )
    @argument(
        "--weight-decay",
        type=non_negative_float,
        default=_TRAIN.weight_decay,
        help="default: %(default)s",
    )
    @argument(
        "--val-split", type=float, default=_TRAIN.val_split, help="held out, default %(default)s"
    )
    @argument("--seed", type=int, default=_TRAIN.seed, help="default: %(default)s")
    @argument("--task", choices=TRAIN_TASKS, help="default: inferred")
    @argument(
        "--loss",
        metavar="LOSS",
        help=f"{', '.join(LOSS_TASKS)}, or a callable (outputs, targets) -> scalar tensor of the "
        "namespace; default: cross_entropy for classification, mse for regression",
    )
    # preprocessing registered with the model (preprocess.py, training/scaling.py)
    @argument(
        "--scale",
        type=_lower_word,
        choices=SCALES,
        default=_TRAIN.scale,
        help="scale float features (and regression targets) with training-split statistics, "
        "inside the registered model; default %(default)s",
    )
    @argument(
        "--encode",
        type=_lower_word,
        choices=ENCODINGS,
        help="one-hot encode string/categorical DataFrame columns, at training and serving",
    )
    # distributed training (training/distributed.py): the run is still logged and registered
    # once, by this kernel
    @argument(
        "--nproc",
        type=positive_int,
        default=_TRAIN.nproc,
        help="processes per node under torchrun (DDP: gloo on CPU, NCCL on GPUs); default 1",
    )
    @argument("--nnodes", type=positive_int, default=_TRAIN.nnodes, help="nodes; default 1")
    @argument(
        "--rdzv-endpoint",
        type=word,
        metavar="HOST:PORT",
        help="rendezvous address, the same on every node (needed with --nnodes > 1)",
    )
    @argument(
        "--reference",
        metavar="EXPR",
        help="rows profiled for %%drift instead of the training split (as clients send them)",
    )
    @front_end
    def train(self, args: argparse.Namespace) -> TrainResult:
        """Train a PyTorch model on arrays, tensors or a DataFrame and register a new version.

        MODEL_EXPR and the data expressions are evaluated in the notebook's namespace. X holds
        rows of any shape (N, ...): tabular rows, images, sequences, int64 token ids. The run
        (parameters, per-epoch metrics, the model) is logged to MLflow and the model becomes the
        next version of NAME; the result carries the version, run id, final metrics and the
        trained model. The Stop button of the progress widget (or interrupting the kernel) ends
        the training after the current batch: the run is recorded as KILLED and nothing is
        registered. Float features are standardized (--scale) and regression targets too, with
        statistics of the training split stored inside the registered model: the served
        version takes raw rows and answers in raw units, and r.predict(X) gives the same here.
        The training split's profile (histograms, statistics, predictions; --reference X for
        other rows) is kept with the version for %drift.

        Examples:

            r = %train Net() --data X y --epochs 5 --lr 1e-3 --name digits
            %train model --data df --target price --task regression
            %train Net(hidden=128) --data X_train y_train --epochs {epochs} --name {name}
            %train Tagger() --data tokens tags --task classification --loss my_loss
            %train Net() --data X y --epochs 5 --nproc 2
            %train Net() --data houses --target price --encode onehot   # raw rows in, raw out
            %train lm --text corpus --tokenizer tok --block-size 64 --name tiny-lm

        With --text, MODEL_EXPR is a transformers causal LM and CORPUS a str expression or a
        text file's path: it is cut into blocks of --block-size tokens, the epochs report
        perplexity and next-token accuracy on held-out blocks, and the model is registered
        with its tokenizer as a language model (%generate, %chat, /v1/completions).
        """
        if args.text is not None:
            return self._train_text(args)
        if not args.data:
            raise UsageError("give --data X_EXPR [Y_EXPR], or --text CORPUS --tokenizer TOK")
        if len(args.data) > 2:
            raise UsageError(
                f"--data takes X_EXPR and optionally Y_EXPR, got {len(args.data)} expressions"
            )
        if len(args.data) == 2 and args.target:
            raise UsageError("give the target either as Y_EXPR or as --target, not both")
        options = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
        config = TrainConfig(**{**options, "loss": self._loss(args.loss)})
        model = self.kernel_magics._eval(args.model, "the model")
        X = self.kernel_magics._eval(args.data[0], "the features")
        y = (
            self.kernel_magics._eval(args.data[1], "the targets")
            if len(args.data) == 2
            else args.target
        )
        reference = (
            None
            if args.reference is None
            else self.kernel_magics._eval(args.reference, "the reference")
        )
        settings = self.kernel_magics.settings()
        reporter = make_progress(self.kernel_magics.progress)
        try:
            result = api.train(
                model,
                X,
                y,
                name=args.name or type(model).__name__.lower(),
                config=config,
                progress=reporter,
                reference=reference,
                settings=settings,
            )
        except TrainingInterrupted as err:
            raise training_stopped(reporter, err, settings) from None
        if not TrainingMagics._trained_once and result.bookkeeping_seconds > 1.0:
            result.notes.append(display.warm_up_note(result.bookkeeping_seconds))
        TrainingMagics._trained_once = True
        conclude = getattr(reporter, "conclude", None)
        if conclude is not None:  # the widget's title: what was registered
            conclude(f"{result.name} v{result.version} registered")
        return result

    def _train_text(self, args: argparse.Namespace) -> TrainResult:
        """``--text``: a causal language model trained on a corpus (``training/text.py``)."""
        if args.data or args.target:
            raise UsageError("give either --data or --text, not both")
        if args.tokenizer is None:
            raise UsageError("--text needs --tokenizer TOK_EXPR (the model's tokenizer)")
        options = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
        config = TrainConfig(**{**options, "loss": self._loss(args.loss)})
        model = self.kernel_magics._eval(args.model, "the model")
        tokenizer = self.kernel_magics._eval(args.tokenizer, "the tokenizer")
        path = os.path.expanduser(word(args.text))
        corpus = path if os.path.isfile(path) else self.kernel_magics._eval(args.text, "the text")
        settings = self.kernel_magics.settings()
        reporter = make_progress(self.kernel_magics.progress)
        try:
            result = api.train(
                model,
                name=args.name or type(model).__name__.lower(),
                text=corpus,
                tokenizer=tokenizer,
                block_size=args.block_size,
                config=config,
                progress=reporter,
                settings=settings,
            )
        except TrainingInterrupted as err:
            raise training_stopped(reporter, err, settings) from None
        conclude = getattr(reporter, "conclude", None)
        if conclude is not None:  # the widget's title: what was registered
            conclude(f"{result.name} v{result.version} registered")
        return result

    def _loss(self, text: str | None) -> Any:
        """A built-in loss by name, or the callable the notebook defines under that name."""
        if text is None or word(text) in LOSS_TASKS:
            return None if text is None else word(text)
        try:
            return self.kernel_magics._eval(text, "the loss")
        except UsageError:
            if text.isidentifier():  # an unknown name: say which losses are built in
                check_loss(text, None)
            raise


MAGICS = TrainingMagics


VIEWS: list[View] = [
    (
        "kernel_magics.tracking",
        "TrainResult",
        display.train_result_text,
        display.train_result_html,
    ),
    (
        "kernel_magics.registration",
        "RegisterResult",
        display.register_result_text,
        display.register_result_html,
    ),
]
