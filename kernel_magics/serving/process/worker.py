"""A worker process: serves the public HTTP API on the supervisor's listening socket and control
routes on its own unix socket.

    python -m kernel_magics.serving.process.worker --fd N --control PATH --index I

It imports torch but never mlflow (a 2 s import it does not need: models load from local
folders). The event loop (uvloop) parses and answers requests; one inference thread per worker
runs the forwards (see batcher.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import socket
import sys
import threading
import time
import warnings
from pathlib import Path

from kernel_magics.config import Settings, load_settings
from kernel_magics.serving import WARMUP_MODEL
from kernel_magics.serving.request.connections import Connections, raise_open_files_limit


def _import_torch(settings: Settings) -> None:
    import torch

    # On this 2-core class of machine one worker with ONE intra-op thread is the best split: the
    # other core runs the event loop (HTTP parsing, JSON, socket writes) and the load generator
    # or notebook; more intra-op threads only contend with them (a 1-row forward gains nothing
    # from threads, a 256-row one ~1.5x, less than what the loop loses).
    torch.set_num_threads(max(1, settings.torch_threads))
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    # Pre-import the torch.export deserializer (≈1.7 s) and load a tiny exported model once: the
    # first load in a process costs ~0.2-0.3 s more than later ones, which a deploy would pay.
    import torch._export.serde.serialize

    try:
        tiny = torch.export.load(str(WARMUP_MODEL)).module()
        with torch.inference_mode():
            tiny(torch.zeros(2, 4))
    except Exception as err:  # another torch may not read it: the first deploy pays instead
        logging.getLogger(__name__).info("pt2 warm-up skipped: %s", err)

    # Arrays decoded straight from request bytes are read-only; torch warns once per process
    # on wrapping them although we never write to them.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    # A float64 body cast to a float32 model may overflow to infinity; the request is refused
    # for it (request/inputs.py), the warning would only fill the log.
    warnings.filterwarnings("ignore", message="overflow encountered in cast")


def _watch_parent(parent: int) -> None:
    """Exit when the supervisor is gone (SIGKILLed): a worker must not outlive it."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kernel_magics.serving.process.worker")
    parser.add_argument("--fd", type=int, required=True, help="inherited listening socket")
    parser.add_argument("--control", required=True, help="this worker's control socket path")
    parser.add_argument("--index", type=int, default=0)
    args = parser.parse_args(argv)
    settings = load_settings()
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s worker-{args.index}[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    log = logging.getLogger(__name__)
    faulthandler.enable()  # a crash in native code leaves its stack in the log
    parent = os.getppid()
    _die_with_parent()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    started = time.perf_counter()
    open_files = raise_open_files_limit()
    _import_torch(settings)

    import uvloop

    from kernel_magics.serving.request.app import WorkerApp
    from kernel_magics.serving.request.protocol import Connection

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    # The inference thread and the loop share the GIL; a shorter switch interval bounds how
    # long the loop waits while the other thread runs Python code between torch ops.
    sys.setswitchinterval(0.0005)
    app = WorkerApp(settings, args.index, loop)
    listen = socket.socket(fileno=args.fd)
    listen.setblocking(False)
    control_path = Path(args.control)
    with contextlib.suppress(FileNotFoundError):
        control_path.unlink()

    servers: list[asyncio.AbstractServer] = []
    connections = Connections.for_settings(settings, open_files)

    async def serve_public() -> None:
        """Called by the supervisor once the live models are loaded: accepting earlier would
        answer 404 to requests that are only waiting for the restore."""
        if not servers:
            servers.append(
                await loop.create_server(
                    lambda: Connection(app.handle_public, settings.max_body_bytes, connections),
                    sock=listen,
                    backlog=1024,
                )
            )

    app.serve_public = serve_public
    control = loop.run_until_complete(
        loop.create_unix_server(
            lambda: Connection(app.handle_control, settings.max_body_bytes), path=str(control_path)
        )
    )
    os.chmod(control_path, 0o600)
    log.info(
        "ready in %.2f s (torch threads %d)", time.perf_counter() - started, settings.torch_threads
    )

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        loop.run_until_complete(stop.wait())
    finally:
        for server in servers:
            server.close()
        connections.close()
        control.close()
        app.close()
        with contextlib.suppress(FileNotFoundError):
            control_path.unlink()
    return 0


if __name__ == "__main__":
    from kernel_magics.exiting import skip_exit_collection

    code = main()
    skip_exit_collection()  # torch's heap: seconds of teardown the supervisor would wait for
    sys.exit(code)
