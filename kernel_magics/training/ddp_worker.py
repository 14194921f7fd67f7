"""One rank of a distributed ``%train``: ``torchrun -m kernel_magics.training.ddp_worker DIR``.

``DIR`` holds what the kernel pickled (``distributed.PAYLOAD``: model, prepared data, config).
Each rank trains its shard (``DistributedSampler``) of the training rows under DDP; rank 0
evaluates on the validation rows exactly as ``fit`` does, appends one JSON line per batch group
and per epoch to ``distributed.EVENTS`` (the kernel tails it). Local rank 0 of every node saves
the final weights to ``distributed.WEIGHTS`` and which node it was to ``distributed.NODE``,
then, once every rank has passed the final barrier, touches ``distributed.FINISHED``.
A rank that fails writes ``error-<rank>.json`` (its error, one line) and exits non-zero, which
makes torchrun stop the others.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from kernel_magics.errors import first_line
from kernel_magics.training.distributed import (
    EVENTS,
    FINISHED,
    NODE,
    PAYLOAD,
    WEIGHTS,
    rank_batch_size,
)


def main(workdir: Path) -> None:
    import pickle

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data.distributed import DistributedSampler

    from kernel_magics.training import fit as fit_module

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    torch.set_num_threads(1)
    with (workdir / PAYLOAD).open("rb") as fh:
        payload = pickle.load(fh)  # written by the kernel that launched us (cloudpickle)
    model, data, config = payload["model"], payload["data"], payload["config"]
    # NCCL only when every rank of this node has a GPU of its own: one backend for all ranks.
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        model.to(device)
        torch.manual_seed(config.seed)
        ddp = DistributedDataParallel(model, device_ids=[local_rank] if use_cuda else None)
        opt = fit_module._optimizer(ddp, config)
        loss_fn = fit_module.make_loss(config.loss, data.task)
        # Over row indices: the sampler only needs len(); rows are gathered from the tensors.
        rows: Any = range(len(data.X_train))
        sampler: DistributedSampler[int] = DistributedSampler(
            rows, num_replicas=world, rank=rank, shuffle=True, seed=config.seed
        )
        batch = rank_batch_size(config.batch_size, world)
        events = (workdir / EVENTS).open("a") if rank == 0 else None
        for epoch in range(1, config.epochs + 1):
            started = time.perf_counter()
            sampler.set_epoch(epoch)
            ddp.train()
            total = torch.zeros(2, dtype=torch.float64, device=device)  # loss·rows, rows
            losses: list[float] = []
            order = torch.tensor(list(sampler))
            for idx in torch.split(order, batch):
                value = fit_module.train_step(
                    ddp, opt, loss_fn, data, idx, device, epoch, config.epochs
                )
                total += torch.tensor([value * len(idx), len(idx)], dtype=torch.float64)
                losses.append(value)
            dist.all_reduce(total)  # the epoch's mean loss over every rank's rows
            if events is not None:
                val_loss, metrics = fit_module._evaluate(
                    model, loss_fn, data, device, config.batch_size
                )
                result = {
                    "epoch": epoch,
                    "epochs": config.epochs,
                    "train_loss": float(total[0] / total[1]),
                    "val_loss": val_loss,
                    "metrics": metrics,
                    "seconds": time.perf_counter() - started,
                    "metrics_on": data.metrics_on,
                }
                _emit(events, {"type": "step", "losses": losses})
                _emit(events, {"type": "epoch", "result": result})
        if local_rank == 0:
            # Every node's kernel gets the weights (DDP keeps the replicas identical); which
            # node this was decides who registers (distributed.SecondaryNode).
            node = {"node": int(os.environ.get("GROUP_RANK", "0")), "rank": rank}
            (workdir / NODE).write_text(json.dumps(node))
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            torch.save(state, workdir / (WEIGHTS + ".tmp"))
            # Renamed into place: the kernel reads the weights only once they are complete.
            (workdir / (WEIGHTS + ".tmp")).replace(workdir / WEIGHTS)
        dist.barrier()
        if local_rank == 0:
            (workdir / FINISHED).touch()  # every rank of the world is past its last step
    finally:
        # A teardown error must neither hide the error that got us here nor fail a rank
        # whose work is done (its agent would then skip torchrun's exit barrier and leave
        # the other nodes' agents waiting in it).
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _emit(events: Any, event: dict[str, Any]) -> None:
    events.write(json.dumps(event) + "\n")
    events.flush()


def _record_failure(workdir: Path, exc: BaseException) -> None:
    rank = os.environ.get("RANK", "?")
    error = {"rank": rank, "error": f"{type(exc).__name__}: {first_line(exc)}", "time": time.time()}
    (workdir / f"error-{rank}.json").write_text(json.dumps(error))


if __name__ == "__main__":
    from kernel_magics.exiting import skip_exit_collection

    target = Path(sys.argv[1])
    try:
        main(target)
    except BaseException as exc:
        _record_failure(target, exc)
        raise SystemExit(1) from None
    finally:
        skip_exit_collection()  # torch's and MLflow's heap: seconds torchrun would wait for
