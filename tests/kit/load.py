"""Load while a version changes: threads sending 1-row predictions until stopped, counting
the versions that answered and every failed request (the canary and swap-under-load tests of
both serving targets)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import requests


class Load:
    """``threads`` clients POSTing ``body`` to ``url`` until the ``with`` block ends (at most
    ``cap`` requests each). ``versions``: the ``X-Model-Version`` of every answer in order;
    ``after_mark``: those of requests sent after ``mark()``; ``failed``: what went wrong."""

    def __init__(
        self,
        url: str,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        threads: int = 3,
        cap: int = 3000,
    ) -> None:
        self.url, self.body, self.headers, self.cap = url, body, headers or {}, cap
        self.versions: list[int] = []
        self.after_mark: Counter[int] = Counter()
        self.failed: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._marked = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    @property
    def seen(self) -> Counter[int]:
        with self._lock:
            return Counter(self.versions)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def mark(self) -> None:
        """From now on, count the versions answering in ``after_mark`` too."""
        self._marked.set()

    def wait_for(self, count: int) -> int:
        """Wait until ``count`` more requests were answered (or every client stopped); returns
        how many had been answered when called."""
        start = len(self.versions)
        while len(self.versions) < start + count and any(t.is_alive() for t in self._threads):
            time.sleep(0.01)
        return start

    def _run(self) -> None:
        session = requests.Session()
        session.headers.update(self.headers)
        for _ in range(self.cap):
            if self._stop.is_set():
                break
            marked = self._marked.is_set()  # read before sending: answers after it must be new
            try:
                r = session.post(self.url, json=self.body, timeout=30)
            except requests.RequestException as err:
                with self._lock:
                    self.failed.append(repr(err))
                continue
            with self._lock:
                if r.status_code != 200:
                    self.failed.append(f"{r.status_code} {r.text[:200]}")
                    continue
                version = int(r.headers["X-Model-Version"])
                self.versions.append(version)
                if marked:
                    self.after_mark[version] += 1
