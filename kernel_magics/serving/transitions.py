"""Deploy, rollback and undeploy as the supervisor runs them, one model at a time.

Order, under the model's lock: plan (store lookups and the hash check; nothing changes) → every
ready worker loads and warms the version (staged beside the live one) → the live alias moves
(the store is the source of truth a restarted process rebuilds from) → every worker activates it
(a dict swap) → **the caller gets its answer** → the event is appended to the deployment history.

Answering before the history write keeps the time between "loaded and warm" and "the call
returned" to one alias write and one relay to the workers; the lock is held until the event is
written, so the next transition of that model (a rollback reads the history) always sees it.
A version that fails to load in any worker is discarded everywhere and never made live.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import orjson

from kernel_magics.errors import InvalidInput, KernelMagicsError

if TYPE_CHECKING:
    from kernel_magics.serving.supervisor import Supervisor, Worker

log = logging.getLogger("kernel_magics.serving.supervisor")
LOAD_TIMEOUT = 600.0
_OPTIONS = ("max_batch_size", "max_wait_ms")
Answer = Callable[[int, dict], None]


async def run_transition(
    sup: Supervisor, name: str, action: str, raw: bytes, answer: Answer
) -> None:
    """Carry out one management call; ``answer`` is called exactly once, possibly before this
    coroutine finishes (the history write follows the answer)."""
    try:
        ref, options = parse_manage_body(action, raw)
        lifecycle = await sup.lifecycle()
    except KernelMagicsError as err:
        return answer(err.http_status, {"error": str(err)})
    async with sup.lock(name):
        try:
            plan = await asyncio.to_thread(lifecycle.plan, name, action, ref, **options)
        except KernelMagicsError as err:
            return answer(err.http_status, {"error": str(err)})
        workers = [w for w in sup.workers if w.ready]
        if not workers:
            return answer(503, {"error": "inference process is restarting; retry in a few seconds"})
        spec = asdict(plan.spec) if plan.spec is not None else None
        load_ms = ready_at = None
        if spec is not None:
            loaded = await _load_everywhere(sup, workers, spec)
            if isinstance(loaded, str):
                log.warning("%s %s v%s failed: %s", action, name, spec["version"], loaded)
                return answer(409, {"error": loaded})
            load_ms, ready_at = loaded
        try:
            event, history = await asyncio.to_thread(lifecycle.make_live, plan)
        except Exception as err:
            if spec is not None:
                await _discard(sup, workers, name, spec["version"])
            status = err.http_status if isinstance(err, KernelMagicsError) else 503
            return answer(status, {"error": f"could not record the {action} in the store: {err}"})
        await _switch(sup, workers, name, spec, history)
        log.info("%s %s: v%s → v%s", action, name, plan.from_version, plan.to_version)
        answer(
            200,
            {
                "name": name,
                "version": plan.to_version,
                "previous_version": plan.from_version,
                "action": action,
                "load_ms": load_ms,
                "ready_at": ready_at,
                "history": history,
            },
        )
        try:
            await asyncio.to_thread(lifecycle.record, plan, event)
        except Exception as err:  # the alias moved and the process serves it: only the log lags
            log.error("%s %s: could not append the event to the history: %s", action, name, err)


async def _load_everywhere(
    sup: Supervisor, workers: list[Worker], spec: dict
) -> tuple[float, float | None] | str:
    """Load and warm in every worker: (slowest load_ms, latest ready_at), or why it failed
    (then nothing stays staged anywhere)."""
    results = await asyncio.gather(
        *(sup.call(w, "/_control/load", spec, LOAD_TIMEOUT) for w in workers)
    )
    failed = [body for status, body in results if status != 200]
    if failed:
        await _discard(sup, workers, spec["name"], spec["version"])
        return str(failed[0].get("error") or "load failed")
    load_ms = max(float(body.get("load_ms") or 0) for _, body in results)
    stamps = [body["ready_at"] for _, body in results if isinstance(body.get("ready_at"), float)]
    return load_ms, (max(stamps) if stamps else None)


async def _discard(sup: Supervisor, workers: list[Worker], name: str, version: int) -> None:
    body = {"name": name, "version": version}
    await asyncio.gather(*(sup.call(w, "/_control/discard", body) for w in workers))


async def _switch(
    sup: Supervisor, workers: list[Worker], name: str, spec: dict | None, history: list
) -> None:
    """Activate the staged version (or unload the model) in every worker, and mirror it."""
    if spec is not None:
        sup.live[name] = (spec, history)
        body = {"name": name, "version": spec["version"], "history": history}
        target = "/_control/activate"
    else:
        sup.live.pop(name, None)
        body = {"name": name, "history": history}
        target = "/_control/unload"
    results = await asyncio.gather(*(sup.call(w, target, body) for w in workers))
    for w, (status, answer) in zip(workers, results, strict=True):
        if status != 200:  # it died in between: its respawn restores from sup.live
            log.error("worker %d: %s", w.index, answer.get("error"))


def parse_manage_body(action: str, raw: bytes) -> tuple[Any, dict]:
    """``(ref, options)`` of a deploy/rollback/undeploy body; InvalidInput names what is wrong."""
    try:
        doc = orjson.loads(raw) if raw and raw.strip() else {}
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"body is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("body must be a JSON object")
    if action == "undeploy":
        return None, {}
    if action == "rollback":
        return _rollback_target(doc), {}
    ref = doc.get("ref")
    if ref is not None:
        if isinstance(ref, bool) or not isinstance(ref, int | str) or ref == "":
            raise InvalidInput('"ref" must be a version number, an alias or null')
        ref = str(ref)
    unknown = set(doc) - {"ref", *_OPTIONS}
    if unknown:
        raise InvalidInput(f"unknown deploy option(s): {', '.join(sorted(unknown))}")
    options: dict[str, Any] = {}
    batch, wait = doc.get("max_batch_size"), doc.get("max_wait_ms")
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 1 << 20:
            raise InvalidInput("max_batch_size must be a whole number ≥ 1")
        options["max_batch_size"] = batch
    if wait is not None:
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 10_000:
            raise InvalidInput("max_wait_ms must be a number between 0 and 10000")
        options["max_wait_ms"] = float(wait)
    return ref, options


def _rollback_target(doc: dict) -> int | None:
    if set(doc) - {"to"}:
        raise InvalidInput(f"unknown rollback option(s): {', '.join(sorted(set(doc) - {'to'}))}")
    to = doc.get("to")
    if to is not None and (isinstance(to, bool) or not isinstance(to, int | str)):
        raise InvalidInput('"to" must be a version number or null')
    if isinstance(to, str) and not to.isdigit():
        raise InvalidInput(f'"to" must be a version number, got {to!r}')
    return int(to) if to is not None else None
