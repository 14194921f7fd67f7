"""HTTP to the inference process: one keep-alive connection per thread, the bearer token, every
call with a timeout, and HTTP errors turned back into the core's error classes.

Transport only (bytes and JSON documents); ``LocalTarget`` makes records of what comes back.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kernel_magics.errors import (
    DeployFailed,
    Forbidden,
    InvalidInput,
    KernelMagicsError,
    NotFound,
    ServiceUnavailable,
)

if TYPE_CHECKING:
    import numpy as np

NPY = "application/x-npy"
RESTARTING = "inference process is restarting; retry in a few seconds"
# The status an answer carries says which core error it was on the other side.
_ERRORS: dict[int, type[KernelMagicsError]] = {
    400: InvalidInput,
    401: InvalidInput,
    403: Forbidden,
    404: NotFound,
    405: InvalidInput,
    409: DeployFailed,
    413: InvalidInput,
    415: InvalidInput,
    503: ServiceUnavailable,
}


class HttpClient:
    """Requests to whatever URL ``endpoint()`` names now (it raises while nothing answers)."""

    def __init__(
        self, endpoint: Callable[[], str], token: Callable[[], str], timeout: float
    ) -> None:
        self._endpoint = endpoint
        self._read_token = token
        self._token: str | None = None
        self.timeout = timeout
        self._local = threading.local()

    def token(self) -> str:
        if self._token is None:
            self._token = self._read_token()
        return self._token

    def forget_token(self) -> None:
        """A (re)started process may have written a new token file."""
        self._token = None

    def _conn(self, timeout: float) -> http.client.HTTPConnection:
        url = self._endpoint()
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "url", None) != url:
            self.close()
            parts = urlsplit(url)
            conn = http.client.HTTPConnection(
                parts.hostname or "127.0.0.1", parts.port, timeout=timeout
            )
            self._local.conn, self._local.url = conn, url
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request with the token; retries once on a keep-alive connection the server closed."""
        timeout = timeout or self.timeout
        hdrs = {"Authorization": f"Bearer {self.token()}", **(headers or {})}
        for attempt in (0, 1):
            conn = self._conn(timeout)
            try:
                conn.request(method, path, body=body, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt:
                    raise ServiceUnavailable(RESTARTING) from None
            except (TimeoutError, OSError, http.client.HTTPException):
                self.close()
                raise ServiceUnavailable(RESTARTING) from None
        raise ServiceUnavailable(RESTARTING)

    def call_json(
        self, method: str, path: str, payload: Any = None, timeout: float | None = None
    ) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        status, _, data = self.request(
            method, path, body, {"Content-Type": "application/json"}, timeout
        )
        return check_answer(status, data)

    def predict_rows(self, name: str, array: np.ndarray) -> tuple[np.ndarray, int]:
        """Outputs and their version: .npy for numbers; JSON records for table rows with
        strings (an object array of dicts, for a version with an encoding step)."""
        if array.dtype != object:
            return self.predict_npy(name, array)
        import numpy as np

        body = json.dumps({"instances": array.tolist()}).encode()
        headers = {"Content-Type": "application/json"}
        status, hdrs, data = self.request("POST", f"/v1/models/{name}:predict", body, headers)
        doc = check_answer(status, data)
        return np.asarray(doc["predictions"]), int(hdrs.get("x-model-version", 0))

    def predict_npy(self, name: str, array: np.ndarray) -> tuple[np.ndarray, int]:
        """Outputs and the version that produced them, through the binary .npy body."""
        from kernel_magics.serving.request.codecs import npy_decode, npy_encode

        headers = {"Content-Type": NPY, "Accept": NPY}
        path = f"/v1/models/{name}:predict"
        status, hdrs, data = self.request("POST", path, npy_encode(array), headers)
        if status != 200:
            check_answer(status, data)
        return npy_decode(data).copy(), int(hdrs.get("x-model-version", 0))


def check_answer(status: int, data: bytes) -> Any:
    """The JSON document of a 2xx answer; otherwise the core error its status stands for."""
    try:
        doc = json.loads(data) if data else {}
    except ValueError:
        doc = {"error": data.decode(errors="replace")[:300]}
    if 200 <= status < 300:
        return doc
    message = doc.get("error") if isinstance(doc, dict) else None
    message = message or f"HTTP {status}"
    cls = _ERRORS.get(status, ServiceUnavailable if status >= 500 else InvalidInput)
    raise cls(message)
