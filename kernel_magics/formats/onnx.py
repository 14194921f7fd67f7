"""``onnx``: versions registered in MLflow's onnx flavor (``km.format = "onnx"``, the
file ``model.onnx``), served by onnxruntime through the same routes, batching, hot swap and
hash check as the torch formats.

onnxruntime is imported only when such a version loads: a worker that never serves one never
pays for it. The session gets as many intra-op threads as the worker has torch threads
(``torch_threads``, 1 by default), so both runtimes share the machine the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kernel_magics.errors import DeployFailed
from kernel_magics.formats.loaders import Graph, loader

ONNX_FILE = "model.onnx"


def session(path: Path | bytes, threads: int | None = None) -> object:
    """An onnxruntime CPU session of ``path`` (or a serialized graph; ``threads`` intra-op
    threads, default torch's)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DeployFailed(
            "serving an ONNX version needs onnxruntime: pip install 'kernel-magics[optimize]'"
        ) from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no optimizer chatter in the worker's log
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@loader("onnx", ONNX_FILE, flavor="onnx")
def load_onnx(path: Path) -> Graph:
    """One input tensor → one output tensor; a fixed batch dimension is honoured."""
    sess = session(path)
    inputs, outputs = sess.get_inputs(), sess.get_outputs()  # type: ignore[attr-defined]
    if len(inputs) != 1 or len(outputs) != 1:
        raise DeployFailed(
            f"ONNX models with {len(inputs)} inputs and {len(outputs)} outputs are not served "
            "(one input tensor and one output tensor)"
        )
    name = inputs[0].name
    run = sess.run  # type: ignore[attr-defined]
    batch = inputs[0].shape[0] if inputs[0].shape else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        # onnxruntime releases the GIL while it runs, like a torch forward.
        return torch.from_numpy(np.asarray(run(None, {name: x.numpy()})[0]))

    return Graph(forward, fixed_batch=batch if isinstance(batch, int) else None)
