"""Scaling fitted on the training split, and the registered graph that undoes it.

``scale_data`` fits ``preprocess.Scaling`` on the training rows (float features; regression
targets when the loss is one of ``SCALED_TARGET_LOSSES``) and scales the training and
validation rows with it; the network trains on scaled numbers. ``Preprocessed`` wraps the
trained network with the same statistics as buffers, so the exported version takes raw
features and answers in raw target units: ``(x - center) / scale → net → out * scale +
center``. Validation metrics are computed in raw units (``fit`` inverts the target scaling);
the losses stay in the scaled units the network trains in.
"""

from __future__ import annotations

import dataclasses

import torch

from kernel_magics.preprocess import Scaling
from kernel_magics.training.config import TrainConfig
from kernel_magics.training.data import PreparedData


def scale_data(data: PreparedData, config: TrainConfig) -> PreparedData:
    """``data`` with its features (and regression targets) scaled by ``config.scale``, the
    statistics coming from the training rows only."""
    if config.scale == "none" or len(data.X_train) == 0:
        return data
    x_scaling = y_scaling = None
    changes: dict = {}
    if data.X_train.is_floating_point():  # token ids and masks are not scaled
        x_scaling = Scaling.fit(data.X_train.numpy(), config.scale)
        changes.update(X_train=_apply(data.X_train, x_scaling), X_val=_apply(data.X_val, x_scaling))
    if config.scales_targets(data.task):
        y_scaling = Scaling.fit(data.y_train.numpy(), config.scale)
        changes.update(y_train=_apply(data.y_train, y_scaling), y_val=_apply(data.y_val, y_scaling))
    if not changes:
        return data
    return dataclasses.replace(data, scaling=x_scaling, target_scaling=y_scaling, **changes)


def _apply(values: torch.Tensor, scaling: Scaling) -> torch.Tensor:
    return torch.from_numpy(scaling.apply(values.numpy()))


def unscale_targets(values: torch.Tensor, data: PreparedData) -> torch.Tensor:
    """Targets or regression outputs back in raw units (for metrics)."""
    if data.target_scaling is None:
        return values
    center, scale = _buffers(data.target_scaling)
    shaped = values.reshape(len(values), -1)
    return (shaped * scale + center).reshape(values.shape)


class Preprocessed(torch.nn.Module):
    """The registered model: raw features in, raw units out, the trained network inside."""

    x_center: torch.Tensor
    x_scale: torch.Tensor
    y_center: torch.Tensor
    y_scale: torch.Tensor

    def __init__(
        self, net: torch.nn.Module, scaling: Scaling | None, target_scaling: Scaling | None
    ) -> None:
        super().__init__()
        self.net = net
        # Python flags, read while torch.export traces: a graph carries only the steps it needs
        self.scales_inputs = scaling is not None
        self.scales_outputs = target_scaling is not None
        if scaling is not None:
            center, scale = _buffers(scaling)
            self.register_buffer("x_center", center)
            self.register_buffer("x_scale", scale)
        if target_scaling is not None:
            center, scale = _buffers(target_scaling)
            self.register_buffer("y_center", center)
            self.register_buffer("y_scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scales_inputs:
            x = (x - self.x_center) / self.x_scale
        out = self.net(x)
        if self.scales_outputs:
            out = out * self.y_scale + self.y_center  # (rows, k), or (rows,) when k is 1
        return out


def _buffers(scaling: Scaling) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.tensor(scaling.center, dtype=torch.float32),
        torch.tensor(scaling.scale, dtype=torch.float32),
    )


def registered_model(net: torch.nn.Module, data: PreparedData) -> torch.nn.Module:
    """What to register for a network trained on ``data``: itself when nothing was scaled."""
    if data.scaling is None and data.target_scaling is None:
        return net
    return Preprocessed(net, data.scaling, data.target_scaling).eval()
