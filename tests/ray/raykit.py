"""Helpers of the Ray tests: settings for the session's head, the target, requests to its proxy."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

from kernel_magics.config import Settings, load_settings


@dataclass(frozen=True)
class RayHead:
    address: str
    proxy_port: int
    temp_dir: str


def ray_settings(home: Path, head: RayHead) -> Settings:
    return load_settings(home=home, target="ray", ray_address=head.address, port=head.proxy_port)


def url(settings: Settings, name: str, route: str = ":predict") -> str:
    return f"http://127.0.0.1:{settings.port}/v1/models/{name}{route}"


class Load:
    """``threads`` clients sending 1-row predictions until ``stop()``, at most ``cap`` each:
    versions seen, failed requests, and the versions answered after ``mark()``."""

    def __init__(
        self, settings: Settings, name: str, X: np.ndarray, threads: int = 4, cap: int = 3000
    ):
        self.endpoint = url(settings, name)
        self.body = {"instances": X[:1].tolist()}
        self.seen: Counter = Counter()
        self.after_mark: Counter = Counter()
        self.failed: list[str] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._marked = threading.Event()
        self._cap = cap
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def mark(self) -> None:
        self._marked.set()

    def _run(self) -> None:
        session = requests.Session()
        for _ in range(self._cap):
            if self._stop.is_set():
                break
            marked = self._marked.is_set()  # read before sending: answers after it must be new
            try:
                r = session.post(self.endpoint, json=self.body, timeout=30)
                ok, detail = r.status_code == 200, f"{r.status_code} {r.text[:200]}"
            except requests.RequestException as err:
                ok, detail = False, repr(err)
            with self._lock:
                self.sent += 1
                if not ok:
                    self.failed.append(detail)
                    continue
                version = int(r.headers["x-model-version"])
                self.seen[version] += 1
                if marked:
                    self.after_mark[version] += 1

    def wait_for(self, count: int) -> None:
        """Until ``count`` more requests were answered (or the clients stopped)."""
        import time

        target = self.sent + count
        while self.sent < target and any(t.is_alive() for t in self._threads):
            time.sleep(0.01)
