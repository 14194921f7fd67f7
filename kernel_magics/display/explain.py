"""What the front ends show for an explanation (``%explain``, ``api.explain`` in a notebook).

Text: one line per row (target, output, attribution sum, convergence delta) and the features
ranked by mean |attribution| with the signed values of the first rows. HTML: the same tables and
an inline PNG: bars of mean |attribution| per feature beside signed bars for a few rows, or,
for image-shaped rows ((C, H, W) or (H, W)), each row's input next to its attribution heat map.
Pictures go through ``evaluation.py``'s matplotlib helpers (imported lazily; without matplotlib
the tables stand alone). Nothing here calls the core.
"""

from __future__ import annotations

import html
from typing import Any

from kernel_magics.display.evaluation import _figure, _img, _png
from kernel_magics.display.messages import _html_table, _number, _text_table

SHOWN_FEATURES = 20  # ranked features in a table or plot
SHOWN_ROWS = 4  # rows with signed values in the table and the bar plot
DRAWN_IMAGES = 6  # rows drawn as heat maps


def _title(e: Any) -> str:
    rows = f"{e.rows} row{'s' if e.rows != 1 else ''}"
    steps = f", {e.steps} steps" if e.steps else ""  # Feature Ablation has none
    return (
        f"{e.name} v{e.version}{f' ({e.why})' if e.why else ''}: {e.method} on {rows} "
        f"({e.task}; baseline {e.baseline}{steps})"
    )


ROW_HEADERS = ("row", "target", "output", "predicted", "sum of attributions", "delta")


def _row_rows(e: Any) -> list[list[str]]:
    out = []
    sums = e.attributions.reshape(e.rows, -1).sum(axis=1)
    for i, t in enumerate(e.targets):
        predicted = str(e.predicted[i]) if e.predicted is not None else "-"
        cells = [str(i), str(e.target_labels[i]), _number(float(e.outputs[i, t])), predicted]
        out.append(cells + [_number(float(sums[i])), f"{float(e.delta[i]):+.2g}"])
    return out


def _feature_headers(e: Any) -> list[str]:
    return ["feature", "mean |attr|", *(f"row {i}" for i in range(min(e.rows, SHOWN_ROWS)))]


def _feature_rows(e: Any) -> list[list[str]]:
    index = {name: i for i, name in enumerate(e.feature_names)}
    shown = range(min(e.rows, SHOWN_ROWS))
    return [
        [name, _number(value), *(f"{float(e.attributions[r, index[name]]):+.4g}" for r in shown)]
        for name, value in e.ranking()[:SHOWN_FEATURES]
    ]


def _more(e: Any) -> str:
    hidden = len(e.feature_names) - SHOWN_FEATURES
    return f"... {hidden} more features" if hidden > 0 else ""


def _image_line(e: Any) -> str:
    """Image-shaped rows: where the mean |attribution| is largest (positions in a row)."""
    import numpy as np

    importance = e.importance()
    top = np.argsort(importance.reshape(-1))[::-1][:5]
    where = ", ".join(
        f"[{','.join(map(str, np.unravel_index(i, importance.shape)))}] "
        f"{_number(float(importance.reshape(-1)[i]))}"
        for i in top
    )
    return f"rows of shape {tuple(e.attributions.shape[1:])}; largest mean |attr| at {where}"


def explanation_text(e: Any) -> str:
    parts = [_title(e), _text_table(ROW_HEADERS, _row_rows(e))]
    if e.tabular:
        parts.append(_text_table(_feature_headers(e), _feature_rows(e)) + _suffix(_more(e)))
    else:
        parts.append(_image_line(e))
    parts += [f"note: {n}" for n in e.notes]
    return "\n\n".join(parts)


def _suffix(line: str) -> str:
    return f"\n{line}" if line else ""


def explanation_html(e: Any) -> str:
    parts = [f"<p><b>{html.escape(_title(e))}</b></p>", _html_table(ROW_HEADERS, _row_rows(e))]
    if e.tabular:
        parts.append(_html_table(_feature_headers(e), _feature_rows(e)))
        if _more(e):
            parts.append(f"<p>{html.escape(_more(e))}</p>")
        png = _bars_png(e)
        if png is not None:
            parts.append(_img(png, "feature attributions"))
    else:
        parts.append(f"<p>{html.escape(_image_line(e))}</p>")
        png = _heat_maps_png(e)
        if png is not None:
            parts.append(_img(png, "attribution heat maps"))
    parts += [f"<p>note: {html.escape(n)}</p>" for n in e.notes]
    return "".join(parts)


def _bars_png(e: Any) -> bytes | None:
    """Mean |attribution| per feature; beside it, signed bars of the first rows."""
    import numpy as np

    ranked = e.ranking()[:SHOWN_FEATURES]
    names = [name for name, _ in ranked][::-1]  # barh draws bottom-up: most important on top
    figure = _figure(max(2.5, 0.28 * len(names) + 1.0))
    if figure is None:
        return None
    figure.set_figwidth(9.0)
    mean_ax, rows_ax = figure.subplots(1, 2, sharey=True)
    y = np.arange(len(names))
    mean_ax.barh(y, [value for _, value in ranked][::-1], color="#1f77b4")
    mean_ax.set(yticks=y, xlabel="mean |attribution|", title=f"{e.rows} rows")
    mean_ax.set_yticklabels(names)
    index = [e.feature_names.index(name) for name in names]
    shown = min(e.rows, SHOWN_ROWS)
    height = 0.8 / shown
    for r in range(shown):
        values = e.attributions[r, index]
        label = f"row {r} ({e.target_labels[r]})"
        rows_ax.barh(y - 0.4 + (r + 0.5) * height, values, height=height, label=label)
    rows_ax.axvline(0.0, color="grey", linewidth=0.8)
    rows_ax.set(xlabel="attribution (signed)", title="per row")
    rows_ax.legend(fontsize=7, loc="best")
    return _png(figure)


def _heat_maps_png(e: Any) -> bytes | None:
    """Each drawn row's input beside its attribution heat map (summed over channels; red adds
    to the target's output, blue takes from it)."""
    import numpy as np

    if e.attributions.ndim not in (3, 4):  # rows (H, W) or (C, H, W)
        return None
    shown = min(e.rows, DRAWN_IMAGES)
    figure = _figure(2.2 * shown)
    if figure is None:
        return None
    figure.set_size_inches(5.0, 2.2 * shown)
    axes = figure.subplots(shown, 2, squeeze=False)
    for r in range(shown):
        picture, heat = _picture(e.inputs[r]), _heat(e.attributions[r])
        reach = float(np.abs(heat).max()) or 1.0
        axes[r, 0].imshow(picture, cmap=None if picture.ndim == 3 else "gray")
        axes[r, 0].set_title(f"row {r}", fontsize=8)
        image = axes[r, 1].imshow(heat, cmap="bwr", vmin=-reach, vmax=reach)
        axes[r, 1].set_title(f"attribution to {e.target_labels[r]}", fontsize=8)
        figure.colorbar(image, ax=axes[r, 1], fraction=0.046)
        for ax in axes[r]:
            ax.set(xticks=[], yticks=[])
    return _png(figure)


def _picture(row: Any) -> Any:
    """(H, W) as is; (C, H, W): RGB when C is 3 (scaled to 0..1), else the channel mean."""
    import numpy as np

    row = np.asarray(row, dtype=np.float32)
    if row.ndim == 2:
        return row
    if row.shape[0] == 3:
        rgb = row.transpose(1, 2, 0)
        low, high = float(rgb.min()), float(rgb.max())
        return (rgb - low) / ((high - low) or 1.0)
    return row.mean(axis=0)


def _heat(attribution: Any) -> Any:
    return attribution if attribution.ndim == 2 else attribution.sum(axis=0)
