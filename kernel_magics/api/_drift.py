"""Drift of a served model: current rows against a version's reference profile."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from kernel_magics.api._context import _settings, _store
from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput, NotFound
from kernel_magics.naming import validate_name

if TYPE_CHECKING:
    from kernel_magics.quality.drift import DriftReport
    from kernel_magics.quality.drift_log import Window
    from kernel_magics.quality.profile import ReferenceProfile
    from kernel_magics.store import Store, VersionInfo


def drift(
    name: str,
    *,
    window: Window = None,
    data: Any = None,
    version: int | str | None = None,
    settings: Settings | None = None,
) -> DriftReport:
    """Drift of ``name``'s current inputs and predictions against its reference profile.

    The current rows are the version's logged requests (the inference log; ``window``: a
    duration "1h" for the rows logged since then, or "5000rows" / 5000 for the newest rows;
    default every logged row), or ``data`` (rows as clients send them: array, DataFrame, list
    of records) with the version's own predictions on them computed here. ``version``:
    a number or alias (default: the live version, else the newest). Each feature gets KS (numbers)
    or chi² (categories) and PSI, flagged against ``Settings.drift_p_value`` and
    ``drift_psi``. A version registered without a reference profile raises ``NotFound``
    saying how to add one.
    """
    from kernel_magics.quality.drift import drift_report
    from kernel_magics.quality.drift_log import logged_rows

    validate_name(name)
    resolved = _settings(settings)
    store = _store(resolved)
    info = _drift_version(store, name, version)
    profile = version_profile(store, info)
    if data is not None:
        if window is not None:
            raise InvalidInput("window selects logged rows; with data the rows are given")
        rows, predictions, source = data, _predictions(store, info, data), "data"
    else:
        rows, predictions = logged_rows(resolved.home, name, info.version, window)
        source = "the inference log" + (f" (window {window})" if window is not None else "")
        if not rows:
            raise InvalidInput(
                f"{name} v{info.version} has no logged requests"
                f"{f' in the window {window}' if window is not None else ''}: deploy it and "
                "send requests (the log keeps a sample: log_sample), or pass data=X"
            )
    report = drift_report(
        profile, rows, predictions, p_value=resolved.drift_p_value, psi=resolved.drift_psi
    )
    return dataclasses.replace(report, name=name, version=info.version, source=source)


def version_profile(store: Store, info: VersionInfo) -> ReferenceProfile:
    """The reference profile saved in the version's verified folder (hash checked first)."""
    from kernel_magics.formats.verified import verified_folder
    from kernel_magics.quality.profile import read_profile

    profile = read_profile(verified_folder(store, info))
    if profile is None:
        raise NotFound(
            f"{info.name} v{info.version} has no reference profile: register it with "
            "--reference X (api.register(..., reference=X)) or %train it to add one"
        )
    return profile


def _drift_version(store: Store, name: str, version: int | str | None) -> VersionInfo:
    if version is not None:
        return store.resolve(name, version)
    live = store.live_by_model().get(name)
    return store.resolve(name, live)  # None: the newest version


def _predictions(store: Store, info: VersionInfo, data: Any) -> Any:
    """The version's outputs on ``data``, computed here as the inference process would."""
    from kernel_magics.evaluation.loading import forward, input_rows, load_version

    loaded = load_version(store, info)
    return forward(loaded, input_rows(data, loaded)).float().numpy()
