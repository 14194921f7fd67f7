"""How lifecycle magics hand back what they did: the ``%predict`` array with its notebook view,
and the one line a stopped ``%train`` ends with."""

from __future__ import annotations

from typing import Any

from kernel_magics import api, display
from kernel_magics.config import Settings
from kernel_magics.errors import TrainingInterrupted
from kernel_magics.training.progress import NullProgress


class TrainingStopped(Exception):
    """``%train`` ended by the Stop button or a kernel interrupt. Not a ``UsageError`` (nothing
    was used wrongly): IPython shows ``_render_traceback_``'s one line instead of a traceback,
    and the cell still ends in an error, so that cells queued after it do not run on."""

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


def training_stopped(
    reporter: Any, err: TrainingInterrupted, settings: Settings
) -> TrainingStopped:
    """Say once that the run was KILLED (the reporter already said where it stopped)."""
    detail = str(err) if isinstance(reporter, NullProgress) else None
    line = display.training_stopped_line(api.last_run_id(settings=settings), detail)
    return TrainingStopped(line)


_PREDICTIONS_CLASS: Any = None


def predictions_view(values: Any, name: str, *, raw: bool = False) -> Any:
    """``values`` (a numpy array) as an array of a subclass that a notebook shows as HTML
    (which model answered, the rows); it is the same array for every other use. Arrays derived
    from it (``labels == y``, slices) are shown as plain arrays again."""
    global _PREDICTIONS_CLASS
    if not hasattr(values, "view"):
        return values
    if _PREDICTIONS_CLASS is None:
        import numpy as np

        class Predictions(np.ndarray):
            _km_model: str | None = None
            _km_raw = False

            def __array_finalize__(self, obj: Any) -> None:
                self._km_model = None  # a derived array is not "the model's answer"

            def __repr__(self) -> str:  # the array a user expects to see: array([7, 4, 2])
                return repr(np.asarray(self))

            def _repr_html_(self) -> str | None:
                if self._km_model is None:
                    return None
                return display.predictions_html(np.asarray(self), self._km_model, raw=self._km_raw)

        Predictions.__qualname__ = "Predictions"
        _PREDICTIONS_CLASS = Predictions
    view = values.view(_PREDICTIONS_CLASS)
    view._km_model, view._km_raw = name, raw
    return view
