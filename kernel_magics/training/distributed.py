"""Distributed training: ``%train ... --nproc N [--nnodes M --rdzv-endpoint HOST:PORT]``.

The kernel stays the owner of the run: it pickles the model, the prepared data and the config
(cloudpickle, so a class defined in the notebook travels too) into a temp folder, launches
``torchrun -m kernel_magics.training.ddp_worker`` on it and tails the JSON-lines file rank 0
writes, feeding the same ``Progress`` and ``on_epoch`` callbacks a local ``fit`` feeds (so the
MLflow run gets per-epoch metrics). At the end rank 0's weights are loaded into the kernel's
model; ``tracking.run_training`` then registers the version exactly once, in the kernel.

Where it listens: torchrun's rendezvous store and gloo bind every interface. On one node the
launch uses ``--rdzv-endpoint 127.0.0.1:<free port> --local-addr 127.0.0.1`` and
``GLOO_SOCKET_IFNAME=lo``; the rendezvous server still listens on all interfaces (torch binds
its TCPStore to the wildcard address), for the seconds the training lasts. With
``KERNEL_MAGICS_DISTRIBUTED_NETNS=1`` (the tests set it; it needs root or user namespaces) the
launch runs in a private network namespace where only loopback exists, so nothing is reachable
from outside. Multi-node (``--nnodes M --rdzv-endpoint HOST:PORT``) runs the same magic on every
node (the notebook, or the same notebook under papermill); the nodes must reach each other, so
no namespace is used there. Every node's model ends with the trained weights; the node torchrun
ranks 0 logs the epochs and registers the one version, the others end their run KILLED with
``SecondaryNode`` (nothing registered).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel_magics.errors import InvalidInput, KernelMagicsError, TrainingInterrupted

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

    from kernel_magics.training.config import TrainConfig
    from kernel_magics.training.data import PreparedData
    from kernel_magics.training.fit import EpochResult, FitResult
    from kernel_magics.training.progress import Progress

NETNS_ENV = "KERNEL_MAGICS_DISTRIBUTED_NETNS"
PAYLOAD, EVENTS, WEIGHTS, NODE = "payload.pkl", "events.jsonl", "weights.pt", "node.json"
# Written by a node's local rank 0 once every rank of the world has passed the final barrier:
# the training is over everywhere and this node's weights are on disk.
FINISHED = "finished"
POLL_S = 0.1
# How long torchrun may stay up once FINISHED is written. What it does then is its exit
# barrier, waiting for the other nodes' agents; an agent whose worker failed in teardown after
# the final barrier never joins it, and the others would wait out torchrun's fixed 300 s.
AGENT_EXIT_GRACE_S = 15.0


class DistributedTrainingFailed(KernelMagicsError):
    """A rank failed (its error, one line) or torchrun could not start; nothing registered."""


class SecondaryNode(TrainingInterrupted):
    """This kernel trained as node K > 0 of a multi-node run: its model holds the trained
    weights, but node 0's kernel logs the epochs and registers the version, so this run ends
    KILLED with nothing registered (one version per training, whatever the node count)."""


def is_distributed(config: TrainConfig) -> bool:
    """Whether ``config`` asks for torchrun (its options are checked here: ``TrainConfig``
    holds them without checks of its own)."""
    check_options(config.nproc, config.nnodes, config.rdzv_endpoint)
    return config.nproc > 1 or config.nnodes > 1


def check_options(nproc: Any, nnodes: Any, rdzv_endpoint: Any) -> None:
    for name, value in (("nproc", nproc), ("nnodes", nnodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidInput(f"{name} must be a whole number >= 1, got {value!r}")
    if nnodes > 1 and not rdzv_endpoint:
        raise InvalidInput("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
    if rdzv_endpoint is not None:
        host, _, port = str(rdzv_endpoint).rpartition(":")
        if not host or not port.isdigit():
            raise InvalidInput(f"--rdzv-endpoint must be HOST:PORT, got {rdzv_endpoint!r}")


def rank_batch_size(batch_size: int, world_size: int) -> int:
    """Rows per rank and step: the global batch (what a one-process run takes) split across
    ranks, so DDP's averaged gradient is a step over ``batch_size`` rows as in ``fit``."""
    return max(1, math.ceil(batch_size / world_size))


def steps_per_epoch(n_train: int, batch_size: int, world_size: int) -> int:
    # DistributedSampler pads every rank to ceil(n / world) rows.
    return math.ceil(math.ceil(n_train / world_size) / rank_batch_size(batch_size, world_size))


def fit_distributed(
    model: torch.nn.Module,
    data: PreparedData,
    config: TrainConfig,
    *,
    on_epoch: Callable[[EpochResult], None] | None = None,
    progress: Progress | None = None,
) -> FitResult:
    """``fit`` across ``config.nproc`` processes (× ``config.nnodes`` nodes) under torchrun."""
    import cloudpickle
    import torch

    from kernel_magics.training import fit as fit_module
    from kernel_magics.training.progress import NullProgress

    nproc, nnodes = config.nproc, config.nnodes
    endpoint = config.rdzv_endpoint
    check_options(nproc, nnodes, endpoint)
    # The same up-front checks as a local fit: a model that does not fit the data fails here,
    # before any process starts.
    fit_module._check_args(model, data)
    loss_fn = fit_module.make_loss(config.loss, data.task)
    fit_module.check_targets(config.loss, data.y_train)
    fit_module._check_model(
        model, data, fit_module.model_device(model), loss_fn, custom_loss=callable(config.loss)
    )
    reporter = progress if progress is not None else NullProgress()
    world = nproc * nnodes
    workdir = Path(tempfile.mkdtemp(prefix="km-ddp-"))
    try:
        with (workdir / PAYLOAD).open("wb") as fh:
            cloudpickle.dump({"model": model, "data": data, "config": config}, fh)
        (workdir / EVENTS).touch()
        reporter.start(
            config.epochs,
            steps_per_epoch(len(data.X_train), config.batch_size, world),
            type(model).__name__,
        )
        started = time.perf_counter()
        proc = _launch(workdir, nproc, nnodes, endpoint)
        try:
            history = _follow(proc, workdir, reporter, on_epoch, config.epochs)
        except BaseException as exc:
            stop_group(proc)
            _finish_failed(model, reporter, exc)
            if isinstance(exc, KeyboardInterrupt):
                raise interrupted(exc) from exc
            raise
        state = torch.load(workdir / WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        fit_module._settle(model)
        node = json.loads((workdir / NODE).read_text())["node"]
        if node != 0:
            message = f"trained as node {node} of {nnodes}; node 0's kernel registers the version"
            reporter.finish("done", message)
            raise SecondaryNode(message)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.perf_counter() - started
    last = history[-1]
    reporter.finish("done", fit_module._summary(config.epochs, seconds, last))
    return fit_module.FitResult(
        history=history,
        final_metrics={"train_loss": last.train_loss, "val_loss": last.val_loss, **last.metrics},
        seconds=seconds,
        metrics_on=data.metrics_on,
        steps_per_epoch=steps_per_epoch(len(data.X_train), config.batch_size, world),
    )


# -- launching ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun_command(workdir: Path, nproc: int, nnodes: int, endpoint: str | None) -> list[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes)]
    command += ["--nproc-per-node", str(nproc), "--max-restarts", "0"]
    if nnodes == 1 and endpoint is None:
        endpoint = f"127.0.0.1:{_free_port()}"
        command += ["--local-addr", "127.0.0.1"]
    command += ["--rdzv-backend", "c10d", "--rdzv-endpoint", str(endpoint)]
    return [*command, "-m", "kernel_magics.training.ddp_worker", str(workdir)]


def _launch(workdir: Path, nproc: int, nnodes: int, endpoint: str | None) -> subprocess.Popen[str]:
    command = torchrun_command(workdir, nproc, nnodes, endpoint)
    env = dict(os.environ)
    # One intra-op thread per rank: N ranks × all cores' threads oversubscribe the machine
    # (2 ranks × 2 threads ran 19× slower here).
    env["OMP_NUM_THREADS"] = env.get("KERNEL_MAGICS_DDP_THREADS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if nnodes == 1:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one node: ranks talk over loopback
    if os.environ.get(NETNS_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        if nnodes > 1:
            raise InvalidInput(f"{NETNS_ENV} isolates one node: unset it for --nnodes > 1")
        # A private network namespace with only loopback up: torchrun's wildcard listeners
        # are reachable from nowhere else.
        command = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *command]
    with (workdir / "torchrun.log").open("w") as log:
        try:
            return subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,  # its own process group: an interrupt stops every rank
            )
        except OSError as err:
            raise DistributedTrainingFailed(f"cannot start torchrun: {err}") from None


def stop_group(proc: subprocess.Popen[str], grace: float = 5.0) -> None:
    """TERM torchrun's process group (the agent and every rank), then KILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:  # the agent is gone; ranks it left behind get KILL
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return


def _follow(
    proc: subprocess.Popen[str],
    workdir: Path,
    reporter: Any,
    on_epoch: Callable[[EpochResult], None] | None,
    epochs: int,
) -> list[EpochResult]:
    """Tail rank 0's events until torchrun exits; the reporter's Stop button and a kernel
    interrupt end every rank."""
    from kernel_magics.training.fit import EpochResult
    from kernel_magics.training.progress import stop_check

    history: list[EpochResult] = []
    should_stop = stop_check(reporter)
    finished_at: float | None = None
    with (workdir / EVENTS).open() as events:
        pending = ""
        while True:
            finished = proc.poll() is not None
            if finished_at is None and (workdir / FINISHED).exists():
                finished_at = time.monotonic()
            lingering = finished_at is not None and (
                time.monotonic() - finished_at > AGENT_EXIT_GRACE_S
            )
            if lingering and not finished:
                stop_group(proc)  # the training is over; only the exit barrier is left
                finished = True
            pending += events.read()
            *lines, pending = pending.split("\n")
            for line in lines:
                event = json.loads(line)
                if event["type"] == "step":
                    for loss in event["losses"]:
                        reporter.step(loss)
                elif event["type"] == "epoch":
                    result = EpochResult(**event["result"])
                    history.append(result)
                    reporter.epoch_end(result)
                    if on_epoch is not None:
                        on_epoch(result)
            if finished:
                break
            if should_stop is not None and should_stop():
                raise TrainingInterrupted(
                    f"training stopped at epoch {min(len(history) + 1, epochs)}/{epochs}"
                )
            time.sleep(POLL_S)
    # A node that finished counts as trained even if a rank's teardown failed afterwards.
    if not (workdir / FINISHED).exists() or not (workdir / WEIGHTS).exists():
        raise DistributedTrainingFailed(_failure(workdir, proc.returncode))
    return history


def _failure(workdir: Path, code: int | None) -> str:
    """The first rank's error (the one that failed first), else the end of torchrun's log."""
    errors = []
    for path in workdir.glob("error-*.json"):
        with contextlib.suppress(ValueError, OSError):
            errors.append(json.loads(path.read_text()))
    if errors:
        first = min(errors, key=lambda e: e["time"])
        return f"distributed training failed on rank {first['rank']}: {first['error']}"
    log = (workdir / "torchrun.log").read_text(errors="replace").strip().splitlines()
    tail = next((line.strip() for line in reversed(log) if line.strip()), "no output")
    return f"distributed training failed (torchrun exit code {code}): {tail[:200]}"


def _finish_failed(model: torch.nn.Module, reporter: Any, exc: BaseException) -> None:
    from kernel_magics.errors import first_line
    from kernel_magics.training.fit import _settle

    _settle(model)
    if isinstance(exc, TrainingInterrupted | KeyboardInterrupt):
        reporter.finish("interrupted", first_line(exc) or "training interrupted")
    else:
        reporter.finish("failed", first_line(exc))


def interrupted(exc: BaseException) -> TrainingInterrupted:
    """A kernel interrupt during a distributed fit, as ``fit`` reports one."""
    if isinstance(exc, TrainingInterrupted):
        return exc
    return TrainingInterrupted("training interrupted: every rank was stopped")
