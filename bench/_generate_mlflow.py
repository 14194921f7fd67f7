"""Info row of ``bench/generate.py``: the same registered version served by ``mlflow models serve``
through MLflow's own transformers flavor (pyfunc, ``--env-manager local``, loopback).

MLflow's ``/invocations`` does not stream: a request answers once its whole text is generated,
so "tokens/s" is the generated tokens over the request's wall time (median of 5, after 3
warm-up requests), and there is no time to first token. The generated tokens are those of
in-process greedy ``model.generate`` on the same folder (EOS may end it early), and every answer
must be that text. S concurrent requests: S × those tokens over the wall time of all S.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _gen_model import PROMPTS
from _http import free_port, post
from _log import log
from _procs import spawn, stop_pid

PROMPT = PROMPTS[0]


def mlflow_serve_info(name: str, version: int, tmp: Path, tokens: int, count: int = 8) -> dict:
    """Serve ``name`` version ``version`` with ``mlflow models serve``, then one request at a
    time and ``count`` concurrent ones, greedy, ``tokens`` new tokens at most. {"error": ...}
    if the server does not start; a wrong answer raises."""
    import mlflow

    from kernel_magics.config import load_settings
    from kernel_magics.generative.mlflow_flavor import tokenizer_dir
    from kernel_magics.generative.register import HF_DIR, load_folder
    from kernel_magics.store import Store

    with Store(load_settings()).tracking():
        folder = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}"))
    model, tokenizer = load_folder(folder / HF_DIR, tokenizer_dir(folder, HF_DIR))
    # Greedy is deterministic: the tokens a request generates are the ones model.generate
    # gives here (EOS may end it before ``tokens``); each answer is checked against its text.
    prompt_ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    new_ids = model.generate(prompt_ids, max_new_tokens=tokens, do_sample=False)[0]
    new_ids = new_ids[prompt_ids.shape[-1] :]
    expected = PROMPT + tokenizer.decode(new_ids, skip_special_tokens=True)
    port = free_port()
    log_path = tmp / "mlflow-serve.log"
    proc = spawn(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(folder),
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        stdout=open(log_path, "wb"),  # noqa: SIM115 - the child owns it
        stderr=subprocess.STDOUT,
        # uvicorn is started by name: the venv's bin must be on PATH. One torch thread, as
        # ours and the in-process reference: two threads' barriers on a loaded 2-core
        # machine made single requests 5-50x slower than the same requests 8 at a time.
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "OMP_NUM_THREADS": "1",
        },
    )  # fmt: skip
    try:
        if not _ready(port, proc, 120):
            tail = log_path.read_text(errors="replace")[-400:]
            return {"error": f"mlflow models serve did not start: {tail}"}

        def one(_: int) -> None:
            body = {"inputs": [PROMPT], "params": {"max_new_tokens": tokens, "do_sample": False}}
            status, _, data = post(
                port, "/invocations", json.dumps(body).encode(), "application/json", {}, 600
            )
            if status != 200:
                raise RuntimeError(f"/invocations answered {status}: {data[:200]!r}")
            if json.loads(data)["predictions"] != [expected]:
                raise RuntimeError(f"mlflow answered another text than greedy generate: {data!r}")

        for _ in range(3):  # its first requests are several times slower than the next
            one(0)
        timed = []
        for _ in range(5):
            started = time.perf_counter()
            one(0)
            timed.append(time.perf_counter() - started)
        single_s = statistics.median(timed)
        started = time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(one, range(count)))
        many_s = time.perf_counter() - started
    finally:
        stop_pid(proc.pid, group=True)
    out = {
        "tokens": len(new_ids),
        "one_tok_s": len(new_ids) / single_s,
        "many_streams": count,
        "many_tok_s": count * len(new_ids) / many_s,
        "many_wall_s": many_s,
    }
    log(
        f"mlflow models serve (transformers flavor, pyfunc, no streaming): 1 request "
        f"{out['one_tok_s']:.0f} tok/s; {count} concurrent {out['many_tok_s']:.0f} tok/s aggregate"
    )
    return out


def _ready(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False
