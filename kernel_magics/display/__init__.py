"""Every message and rendering the front ends show, as text and (in a notebook) HTML.

``messages`` (output, tables, models, transitions, history, predictions), ``status`` (the
serving target's status, usage, tokens), ``evaluation``, ``optimize``, ``explain`` and
``dashboards`` (``%monitor``, the registry browser). ``kernel_magics.display`` re-exports
``messages``' names, so ``display.show(...)`` works as it always did.
"""

from __future__ import annotations

from kernel_magics.display.messages import (
    HISTORY_HEADERS,
    LIVE_BADGE,
    LIVE_COLUMN,
    MODEL_HEADERS,
    NO_MODELS,
    PREDICTION_ROWS,
    canary_verdict,
    endpoint,
    history_html,
    history_text,
    html_table,
    in_notebook,
    logs_html,
    models_html,
    models_text,
    number,
    one_line,
    predictions_html,
    predictions_text,
    register_result_html,
    register_result_text,
    show,
    text_table,
    to_json,
    train_result_html,
    train_result_text,
    training_stopped_line,
    transition_html,
    transition_line,
    warm_up_note,
    when,
)

__all__ = [
    "HISTORY_HEADERS",
    "LIVE_BADGE",
    "LIVE_COLUMN",
    "MODEL_HEADERS",
    "NO_MODELS",
    "PREDICTION_ROWS",
    "canary_verdict",
    "endpoint",
    "history_html",
    "history_text",
    "html_table",
    "in_notebook",
    "logs_html",
    "models_html",
    "models_text",
    "number",
    "one_line",
    "predictions_html",
    "predictions_text",
    "register_result_html",
    "register_result_text",
    "show",
    "text_table",
    "to_json",
    "train_result_html",
    "train_result_text",
    "training_stopped_line",
    "transition_html",
    "transition_line",
    "warm_up_note",
    "when",
]
