"""The id a request is answered and logged with (``X-Request-ID``)."""

from __future__ import annotations

import itertools
import os
import re
from typing import TYPE_CHECKING

from kernel_magics.quality.log_store import MAX_REQUEST_ID

if TYPE_CHECKING:
    from kernel_magics.serving.request.protocol import Request

# X-Request-ID: a client's id is echoed (and logged) when it is 1-128 printable ASCII characters
# without spaces; any other request gets a generated one. The canary split reads the header
# itself (request/canary.py), so an id generated here never moves a request between arms.
REQUEST_ID = b"x-request-id"
_SANE_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_REQUEST_ID)
_ids = itertools.count(1)
_id_prefix: tuple[int, bytes] = (0, b"")


def request_id(req: Request) -> bytes:
    """The id this request is answered and logged with: the client's ``X-Request-ID`` when it
    is sane, else a generated one (the same for every call on one request)."""
    rid = req.rid
    if not rid:
        sent = req.headers.get(REQUEST_ID)
        rid = sent if sent is not None and _SANE_REQUEST_ID.fullmatch(sent) else new_request_id()
        req.rid = rid
    return rid


def new_request_id() -> bytes:
    """A fresh id: random per process (two workers, or a restarted process, never collide),
    then a counter."""
    global _id_prefix
    pid = os.getpid()
    if _id_prefix[0] != pid:  # first use, or a forked child
        _id_prefix = (pid, os.urandom(6).hex().encode())
    return b"%s-%x" % (_id_prefix[1], next(_ids))
