"""What the front ends show for a drift report (``%drift``, ``api.drift`` in a notebook).

Text (papermill, a terminal): a title line, the table (feature, test, statistic, p, PSI, flag)
and the thresholds. HTML: the same table and, for each flagged feature, a small bar chart of
its reference and current shares per bin (inline SVG, no plotting dependency). Functions that
return strings; nothing here calls the core.
"""

from __future__ import annotations

import html
from typing import Any

from kernel_magics.display.messages import _html_table, _number, _text_table
from kernel_magics.display.svg import COLORS

HEADERS = ("feature", "test", "statistic", "p", "PSI", "flag")
DRAWN_FEATURES = 12  # histograms shown; the table lists every feature
_WIDTH, _HEIGHT, _PAD = 260, 110, 16


def _title(report: Any) -> str:
    flagged = report.flagged
    what = f"{len(flagged)} flagged ({', '.join(flagged)})" if flagged else "nothing flagged"
    source = f" from {report.source}" if report.source else ""
    return (
        f"{report.name} v{report.version}: drift of {report.rows} current row"
        f"{'s' if report.rows != 1 else ''}{source} against {report.reference_rows} reference "
        f"rows: {what}"
    )


def _rule(report: Any) -> str:
    return f"flagged when p < {report.p_value:g} and PSI ≥ {report.psi:g}"


def _rows(report: Any) -> list[list[str]]:
    return [
        [
            f.feature,
            "KS" if f.test == "ks" else "chi²",
            _number(f.statistic),
            f"{f.p_value:.3g}",
            _number(f.psi),
            "DRIFT" if f.flagged else "",
        ]
        for f in report.features
    ]


def drift_report_text(report: Any) -> str:
    lines = [_title(report), _text_table(HEADERS, _rows(report)), _rule(report), *report.notes]
    return "\n".join(lines)


def drift_report_html(report: Any) -> str:
    charts = "".join(
        histogram_svg(f) for f in [f for f in report.features if f.flagged][:DRAWN_FEATURES]
    )
    notes = "".join(f"<div>{html.escape(n)}</div>" for n in report.notes)
    return (
        f"<div class='kernel-magics-drift'><div><b>{html.escape(_title(report))}</b></div>"
        f"{_html_table(HEADERS, _rows(report))}<div>{html.escape(_rule(report))}</div>{notes}"
        f"<div style='display:flex;flex-wrap:wrap;gap:8px'>{charts}</div></div>"
    )


def histogram_svg(feature: Any) -> str:
    """Reference (blue) and current (orange) shares per bin of one feature, side by side."""
    shares = list(zip(feature.reference_shares, feature.current_shares, strict=True))
    bins = len(shares) or 1
    top = max([max(r, c) for r, c in shares] + [1e-9])
    slot = (_WIDTH - 2 * _PAD) / bins
    bars = []
    for i, (label, pair) in enumerate(zip(feature.bins, shares, strict=True)):
        for j, share in enumerate(pair):
            height = (_HEIGHT - 2 * _PAD) * share / top
            x = _PAD + i * slot + j * slot / 2
            y = _HEIGHT - _PAD - height
            bars.append(
                f"<rect x='{x:.1f}' y='{y:.1f}' width='{slot / 2 - 1:.1f}' height='{height:.1f}' "
                f"fill='{COLORS[j]}'><title>{html.escape(label)}: "
                f"{'reference' if j == 0 else 'current'} {share:.1%}</title></rect>"
            )
    caption = f"{feature.feature} (PSI {feature.psi:.3g}; blue reference, orange current)"
    base = _HEIGHT - _PAD
    ends = (feature.bins[0], feature.bins[-1]) if feature.bins else ("", "")
    axis = (
        f"<line x1='{_PAD}' y1='{base}' x2='{_WIDTH - _PAD}' y2='{base}' stroke='#888'/>"
        f"<text x='{_PAD}' y='{_HEIGHT - 4}' font-size='9'>{html.escape(ends[0])}</text>"
        f"<text x='{_WIDTH - _PAD}' y='{_HEIGHT - 4}' font-size='9' text-anchor='end'>"
        f"{html.escape(ends[1])}</text>"
    )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{_WIDTH}' height='{_HEIGHT}'>"
        f"<title>{html.escape(caption)}</title>"
        f"<text x='{_PAD}' y='12' font-size='11'>{html.escape(caption)}</text>"
        f"{''.join(bars)}{axis}</svg>"
    )
