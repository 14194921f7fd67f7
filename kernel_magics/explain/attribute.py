"""``%explain NAME[@V] X`` / ``api.explain``: attributions of a registered version's inputs.

The version is loaded in this kernel after its hash check by the serving loader of its format
(``evaluation.loading``), so what is explained is what ``%deploy`` serves; the inference
process's request path gains nothing. Attributions are Captum's ``IntegratedGradients`` on the
loaded forward (the pt2 graph module or the pickled module; both are differentiable). Formats
without gradients (ONNX through onnxruntime, a scikit-learn estimator served by itself) get
Captum's ``FeatureAblation`` over the served function instead: each feature replaced by the
baseline's, one at a time, and the change in the output is its attribution; the header says
which method. Integer or boolean inputs (token ids, masks: a path from a baseline to them does
not exist) are refused with one line. Nothing is written to the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from kernel_magics.errors import InvalidInput, first_line
from kernel_magics.evaluation.loading import LoadedVersion, forward, input_rows, load_version
from kernel_magics.explain.choices import feature_names, output_labels, resolve_targets, task_of
from kernel_magics.explain.record import Explanation
from kernel_magics.store import Store, parse_ref

if TYPE_CHECKING:
    import torch

BASELINES = ("zeros", "mean")
MAX_ROWS = 200  # rows explained at once: beyond this, no table or plot is readable
MAX_STEPS = 1000
TORCH_FORMATS = ("pt2", "pickle")  # loaded as torch modules: gradients reach the input
INTEGRATED_GRADIENTS = "Integrated Gradients"
FEATURE_ABLATION = "Feature Ablation"  # formats without gradients (onnx, sklearn)
# Elements per Captum forward (interpolation steps × rows × row size): bounds memory for
# image models while a tabular model still runs every step in one forward.
ELEMENTS_PER_FORWARD = 1 << 24


def explain(
    store: Store,
    ref: str,
    X: Any,
    *,
    target: Any = None,
    baseline: str | Any = "zeros",
    steps: int = 50,
    rows: int | None = None,
) -> Explanation:
    """Attributions of version ``ref`` (``NAME``, ``NAME@V``, ``NAME@ALIAS``) for the rows of
    ``X`` (the first ``rows`` of them when given).

    ``target``: a class label or output index (default: each row's predicted class; output 0
    of a single-output regressor). ``baseline``: "zeros", "mean" (the mean row of ``X``) or an
    array shaped like one row. ``steps``: interpolation steps of the integral."""
    _check_options(baseline, steps, rows)
    version_ref, why = _default_version(store, ref)
    loaded = load_version(store, version_ref)
    data = input_rows(X, loaded)
    if data.dtype.kind in "biu":
        raise InvalidInput(
            f"{loaded.ref} takes {data.dtype} inputs (token ids, masks), which have no gradient: "
            "Integrated Gradients needs float inputs (explain a model that takes embeddings)"
        )
    chosen = data[:rows] if rows else data
    if len(chosen) == 0:
        raise InvalidInput("X has no rows to explain")
    if len(chosen) > MAX_ROWS:
        raise InvalidInput(
            f"X has {len(chosen)} rows; at most {MAX_ROWS} are explained at once "
            "(rows=K / --rows K explains the first K)"
        )
    gradients = loaded.format in TORCH_FORMATS
    call = differentiable_call(loaded, chosen) if gradients else batched_call(loaded)
    outputs = forward(loaded, chosen).float().numpy().reshape(len(chosen), -1)
    task = task_of(loaded, outputs)
    labels = output_labels(loaded, task, outputs.shape[1])
    targets = resolve_targets(target, task, outputs, labels, loaded.ref)
    start = _baseline(baseline, data, loaded.ref)
    if gradients:
        attributions, delta = integrated_gradients(call, chosen, start, targets, steps)
        notes = _notes(outputs, targets, delta, steps)
    else:
        attributions = feature_ablation(call, chosen, start, targets)
        delta = np.zeros(len(chosen), dtype=np.float32)  # no integral: nothing left over
        notes = [f"{loaded.format} versions have no gradients: {ABLATION_NOTE}"]
    predicted = None
    if task == "classification" and outputs.shape[1] > 1:
        predicted = [labels[int(i)] for i in outputs.argmax(axis=1)]
    return Explanation(
        name=loaded.info.name,
        version=loaded.info.version,
        task=task,
        targets=targets,
        target_labels=[labels[t] for t in targets],
        attributions=attributions,
        inputs=chosen,
        feature_names=feature_names(X, chosen, loaded),
        outputs=outputs,
        delta=delta,
        baseline=baseline if isinstance(baseline, str) else "given",
        steps=steps if gradients else 0,
        predicted=predicted,
        notes=notes,
        why=why,
        method=INTEGRATED_GRADIENTS if gradients else FEATURE_ABLATION,
    )


ABLATION_NOTE = (
    "Captum's FeatureAblation over the served function (each feature set to the baseline's, "
    "one at a time); attributions need not add up to the output change"
)


def _default_version(store: Store, ref: str) -> tuple[str, str]:
    """A bare NAME means what ``%predict`` answers with: the live version, else the newest.
    Returns the ref to load and, for a bare name, why that version (the explanation's header
    says it)."""
    name, version = parse_ref(ref)
    if version is not None:
        return ref, ""
    newest = store.resolve(name).version
    live = store.live_version(name)
    if live is None:
        return f"{name}@{newest}", "the newest version; none is live"
    if live == newest:
        return f"{name}@{live}", "the live version"
    return f"{name}@{live}", f"the live version; v{newest} is newer"


def _check_options(baseline: Any, steps: int, rows: int | None) -> None:
    """Cheap mistakes first, before a version is loaded."""
    if isinstance(baseline, str) and baseline not in BASELINES:
        raise InvalidInput(f"baseline {baseline!r}: use one of {', '.join(BASELINES)} or an array")
    if not isinstance(steps, int) or not 2 <= steps <= MAX_STEPS:
        raise InvalidInput(f"steps must be an integer in 2..{MAX_STEPS}, got {steps!r}")
    if rows is not None and (not isinstance(rows, int) or rows < 1):
        raise InvalidInput(f"rows must be a positive integer, got {rows!r}")


def differentiable_call(
    loaded: LoadedVersion, rows: np.ndarray
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The version's forward with gradients (``batched_call``). One forward on the first row
    checks that gradients reach the input: an onnxruntime session, for one, cannot give
    them."""
    import torch

    call = batched_call(loaded)
    probe = torch.from_numpy(rows[:1].copy()).requires_grad_(True)
    reason = ""
    try:
        out = call(probe)
        ok = isinstance(out, torch.Tensor) and out.requires_grad
    except Exception as err:  # loaders raise what their runtime raises
        ok, reason = False, first_line(err, limit=120)
    if not ok:
        # a torch format failing here is unexpected: its reason helps; onnx's never does
        detail = f" ({reason})" if reason and loaded.format in TORCH_FORMATS else ""
        parent = loaded.info.parent
        hint = f"; explain the torch version it was made from, {parent}" if parent else ""
        raise InvalidInput(
            f"{loaded.ref} (format {loaded.format}) is not differentiable in this kernel"
            f"{detail}{hint}"
        )
    return call


def batched_call(loaded: LoadedVersion) -> Callable[[torch.Tensor], torch.Tensor]:
    """The version's forward, outputs flattened to (rows, outputs); a graph with a fixed
    batch size gets its batches padded (the padding's outputs are dropped, so its gradients
    are zero)."""
    import torch

    size = loaded.fixed_batch

    def call(x: torch.Tensor) -> torch.Tensor:
        if not size:
            out = loaded.call(x)
        else:
            parts = []
            for begin in range(0, len(x), size):
                chunk = x[begin : begin + size]
                n = len(chunk)
                if n < size:
                    chunk = torch.cat([chunk, chunk[-1:].expand(size - n, *chunk.shape[1:])])
                parts.append(loaded.call(chunk)[:n])
            out = torch.cat(parts)
        return out.reshape(len(out), -1)

    return call


def _baseline(baseline: Any, data: np.ndarray, ref: str) -> np.ndarray:
    """One row: zeros, the mean row of X, or the given array."""
    if isinstance(baseline, str):
        if baseline == "mean":
            return data.mean(axis=0, dtype=np.float64).astype(data.dtype)
        return np.zeros(data.shape[1:], dtype=data.dtype)
    from kernel_magics.training.inputs import as_array

    row = as_array(baseline, "the baseline")
    if row.shape == (1, *data.shape[1:]):
        row = row[0]
    if row.shape != data.shape[1:]:
        raise InvalidInput(
            f"the baseline has shape {tuple(row.shape)}, but {ref} takes rows of shape "
            f"{tuple(data.shape[1:])}"
        )
    return np.ascontiguousarray(row, dtype=data.dtype)


def integrated_gradients(
    call: Callable[[torch.Tensor], torch.Tensor],
    rows: np.ndarray,
    baseline: np.ndarray,
    targets: list[int],
    steps: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Captum's Integrated Gradients: (attributions shaped like ``rows``, delta per row)."""
    import torch
    from captum.attr import IntegratedGradients

    inputs = torch.from_numpy(np.ascontiguousarray(rows))
    start = torch.from_numpy(baseline).unsqueeze(0).expand_as(inputs).contiguous()
    row_size = max(1, int(np.prod(rows.shape[1:])))
    per_forward = max(len(rows), ELEMENTS_PER_FORWARD // row_size)
    attributions, delta = IntegratedGradients(call).attribute(
        inputs,
        baselines=start,
        target=torch.tensor(targets),
        n_steps=steps,
        internal_batch_size=per_forward if per_forward < len(rows) * steps else None,
        return_convergence_delta=True,
    )
    return attributions.detach().numpy(), delta.detach().float().numpy()


def feature_ablation(
    call: Callable[[torch.Tensor], torch.Tensor],
    rows: np.ndarray,
    baseline: np.ndarray,
    targets: list[int],
) -> np.ndarray:
    """Captum's FeatureAblation: each input element (a feature of a tabular row) replaced by
    the baseline's, the change of the target output its attribution; shaped like ``rows``."""
    import torch
    from captum.attr import FeatureAblation

    inputs = torch.from_numpy(np.ascontiguousarray(rows))
    start = torch.from_numpy(baseline).unsqueeze(0).expand_as(inputs).contiguous()
    with torch.no_grad():
        attributions = FeatureAblation(call).attribute(
            inputs, baselines=start, target=torch.tensor(targets), perturbations_per_eval=8
        )
    return attributions.detach().float().numpy()


def _notes(outputs: np.ndarray, targets: list[int], delta: np.ndarray, steps: int) -> list[str]:
    scale = float(np.abs(outputs[np.arange(len(targets)), targets]).max()) or 1.0
    worst = float(np.abs(delta).max())
    if worst > 0.05 * scale:
        return [
            f"convergence delta up to {worst:.3g} (outputs up to {scale:.3g}): attributions "
            f"do not add up to the output change; more steps than {steps} help"
        ]
    return []
