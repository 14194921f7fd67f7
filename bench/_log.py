"""The benchmark's progress lines on stdout (timestamped, flushed: a run is watched live)."""

from __future__ import annotations

import time


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)
