"""``POST /v1/models/{name}/feedback``: true labels for logged requests
(``kernel_magics/quality/feedback.py``), stored beside the inference log.

The token rule is the management routes' one: a token is always needed (401 without) and its
scope must be ``manage`` (403 below). The body is checked on the loop (400 with a JSON error);
the write runs on a thread of its own after this worker's log writer has written what it had
queued, so a label sent right after its prediction finds its row.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import orjson

from kernel_magics.errors import InvalidInput
from kernel_magics.quality.feedback import parse_feedback, record_feedback
from kernel_magics.serving.request.bodies import describe_error, dumps, error_body
from kernel_magics.serving.request.protocol import Connection, Request
from kernel_magics.serving.tokens import MANAGE, refusal

if TYPE_CHECKING:
    from kernel_magics.serving.request.app import WorkerApp

log = logging.getLogger(__name__)
_FLUSH_TIMEOUT_S = 2.0
_writes = ThreadPoolExecutor(1, thread_name_prefix="feedback")


def feedback(app: WorkerApp, req: Request, conn: Connection, raw_name: bytes) -> None:
    who = app.tokens.identify(req.headers.get(b"authorization"))
    if who is None:
        app._unauthorized(req, conn)
        return
    refused = refusal(who, app.tokens.scope(who), MANAGE, "feedback")
    if refused is not None:
        conn.send(403, dumps(refused), req=req)
        return
    name = raw_name.decode("latin-1")
    if name not in app.table.live:
        conn.send(404, error_body(app._not_deployed(name[:200])), req=req)
        return
    try:
        try:
            doc = orjson.loads(req.body)
        except orjson.JSONDecodeError as err:
            raise InvalidInput(f"body is not valid JSON: {err}") from None
        items = parse_feedback(doc)
    except InvalidInput as err:
        conn.send(err.http_status, error_body(str(err)), req=req)
        return
    app.loop.create_task(_record(app, req, conn, name, items))


async def _record(app: WorkerApp, req: Request, conn: Connection, name: str, items: Any) -> None:
    def write() -> dict[str, Any]:
        app.inference_log.flush(_FLUSH_TIMEOUT_S)
        return record_feedback(app.settings.home, name, items)

    try:
        answer = await app.loop.run_in_executor(_writes, write)
    except Exception as err:  # the log's file is unwritable or the disk is full
        log.warning("feedback for %s not stored: %s", name, err)
        message = f"feedback not stored: {describe_error(err)}"
        conn.send(503, error_body(message), req=req)
        return
    conn.send(200, dumps(answer), req=req)
