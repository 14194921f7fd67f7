"""Deploy, rollback and undeploy as the supervisor runs them, one model at a time.

Order, under the model's lock: plan (store lookups and the hash check; nothing changes) → every
ready worker loads and warms the version (staged beside the live one) → the live alias moves
(the store is the source of truth a restarted process rebuilds from) → every worker activates it
(a dict swap) → **the caller gets its answer** → the event is appended to the deployment history.

Answering before the history write keeps the time between "loaded and warm" and "the call
returned" to one alias write and one relay to the workers; the lock is held until the event is
written, so the next transition of that model (a rollback reads the history) always sees it.
A version that fails to load in any worker is discarded everywhere and never made live.

The logic sees the workers only through ``WorkerPool`` (the supervisor's pool implements it), so
it can be exercised against an in-memory pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import orjson

from kernel_magics.errors import InvalidInput, KernelMagicsError, clip
from kernel_magics.naming import is_version_text, parse_version
from kernel_magics.quality.canary_judge import check_rule
from kernel_magics.records import CanaryRule, HistoryEvent, ModelSpec
from kernel_magics.serving.deploy_options import (
    CANARY_MAX,
    CANARY_MIN,
    DEPLOY_OPTIONS,
    LOG_SAMPLE_MAX,
    LOG_SAMPLE_MIN,
    MAX_BATCH_SIZE_MAX,
    MAX_BATCH_SIZE_MIN,
    MAX_WAIT_MS_MAX,
    MAX_WAIT_MS_MIN,
)

if TYPE_CHECKING:
    from kernel_magics.serving.control.lifecycle import Lifecycle, Plan

Answer = Callable[[int, dict], None]
History = tuple[HistoryEvent, ...]


@dataclass(frozen=True)
class LiveModel:
    """What the process serves for one model (the supervisor's mirror of the store): a
    respawned worker is reloaded from it."""

    spec: ModelSpec
    history: History
    canary: ModelSpec | None = None  # a canary beside the live version, and its share
    canary_percent: int = 0
    canary_rule: CanaryRule | None = None  # how the process judges that canary (None: it does not)


@dataclass(frozen=True)
class Reply:
    """One worker's answer to a pool operation."""

    worker: int  # the worker's index, for log lines
    status: int
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def error(self) -> str:
        return str(self.body.get("error") or f"worker {self.worker} answered {self.status}")


class WorkerRef(Protocol):
    index: int


W = TypeVar("W", bound=WorkerRef)


class WorkerPool(Protocol[W]):
    """What a transition needs from the process's workers. Each operation runs on every worker
    given, concurrently, and returns one ``Reply`` per worker (a worker that does not answer is
    a 503 reply, never an exception)."""

    log: logging.Logger
    live: dict[str, LiveModel]  # name → what is live: the mirror a respawn restores from

    def ready_workers(self) -> Sequence[W]: ...

    def lock(self, name: str) -> asyncio.Lock:
        """Management of one model runs one call at a time (plan to history write)."""
        ...

    async def load(self, workers: Sequence[W], spec: ModelSpec) -> list[Reply]:
        """Load and warm ``spec`` beside the live version (staged)."""
        ...

    async def discard(self, workers: Sequence[W], name: str, version: int | None) -> list[Reply]:
        """Drop staged copies of ``name`` (of ``version`` only, when given)."""
        ...

    async def activate(
        self, workers: Sequence[W], name: str, version: int, history: History
    ) -> list[Reply]:
        """Make the staged ``version`` live; each worker answers once the old one drained."""
        ...

    async def unload(self, workers: Sequence[W], name: str, history: History) -> list[Reply]:
        """Stop serving ``name``."""
        ...

    async def canary(
        self,
        workers: Sequence[W],
        name: str,
        version: int | None,
        percent: int,
        history: History,
        analyze: bool = False,
    ) -> list[Reply]:
        """Send ``percent`` of ``name``'s requests to the staged ``version`` (None: stop the
        canary); each worker answers once a stopped canary drained. ``analyze``: the workers
        record both arms' answers for the judge (``canary_watch.py``)."""
        ...


async def run_transition(
    pool: WorkerPool[W],
    lifecycle: Callable[[], Awaitable[Lifecycle]],
    name: str,
    action: str,
    raw: bytes,
    answer: Answer,
    *,
    reason: str | None = None,
    evidence: dict[str, Any] | None = None,
    expect_canary: int | None = None,
) -> None:
    """Carry out one management call; ``answer`` is called exactly once, possibly before this
    coroutine finishes (the history write follows the answer). ``lifecycle`` gives the store
    side once it is ready (the supervisor imports mlflow in the background).

    The judge of a canary (``canary_watch.py``) promotes or drops it through here too, with the
    ``reason`` and ``evidence`` its history event records; ``expect_canary`` is the version it
    judged: if another runs by the time the model's lock is held, nothing happens (409)."""
    try:
        ref, options = parse_manage_body(action, raw)
        store = await lifecycle()
    except KernelMagicsError as err:
        return answer(err.http_status, {"error": str(err)})
    log = pool.log
    async with pool.lock(name):
        try:
            plan = await asyncio.to_thread(store.plan, name, action, ref, **options)
        except KernelMagicsError as err:
            return answer(err.http_status, {"error": str(err)})
        live = pool.live.get(name)
        if expect_canary is not None:
            running = live.canary.version if live is not None and live.canary else None
            if running != expect_canary:
                why = f"{name}: the judged canary v{expect_canary} no longer runs"
                return answer(409, {"error": why})
        if reason is not None or evidence is not None:
            plan = dataclasses.replace(plan, reason=reason, evidence=evidence)
        if plan.unchanged and live is not None and live.spec.version == plan.to_version:
            # already live as asked, and served (a version a restart could not restore is
            # loaded again): nothing to load, move or record
            return answer(200, _unchanged_body(plan))
        workers = pool.ready_workers()
        if not workers:
            return answer(503, {"error": "inference process is restarting; retry in a few seconds"})
        spec = plan.spec
        load_ms = ready_at = None
        reused = False
        if spec is not None:
            loaded = await _load_everywhere(pool, workers, spec)
            if isinstance(loaded, str):
                log.warning("%s %s v%s failed: %s", action, name, spec.version, loaded)
                return answer(409, {"error": loaded})
            load_ms, ready_at, reused = loaded
        try:
            event, history = await asyncio.to_thread(store.make_live, plan)
        except Exception as err:
            if spec is not None:
                await pool.discard(workers, name, spec.version)
            status = err.http_status if isinstance(err, KernelMagicsError) else 503
            return answer(status, {"error": f"could not record the {action} in the store: {err}"})
        await _switch(pool, workers, name, spec, history, plan.action, plan.canary, plan.rule)
        log.info("%s %s: %s", plan.action, name, _arrow(plan.from_version, plan.to_version))
        if plan.reason:
            log.info("%s %s: %s", plan.action, name, plan.reason)
        answer(
            200,
            {
                "name": name,
                "version": plan.to_version,
                "previous_version": plan.from_version,
                "action": plan.action,
                "canary": plan.canary,
                "analyze": plan.rule.to_wire() if plan.rule is not None else None,
                "load_ms": load_ms,
                "ready_at": ready_at,
                "reused": reused,
                "history": [e.to_wire() for e in history],
            },
        )
        try:
            await asyncio.to_thread(store.record, plan, event)
        except Exception as err:  # the alias moved and the process serves it: only the log lags
            log.error("%s %s: could not append the event to the history: %s", action, name, err)


def _unchanged_body(plan: Plan) -> dict[str, Any]:
    """The answer to a deploy of the version already live (``TransitionResult.unchanged``)."""
    return {
        "name": plan.name,
        "version": plan.to_version,
        "previous_version": plan.from_version,
        "action": plan.action,
        "unchanged": True,
        "history": [e.to_wire() for e in plan.history],
    }


def _arrow(before: int | None, after: int | None) -> str:
    """``v1 → v2`` for the log, as the history's run names write it: ``v- → v1 (first
    deploy)`` when nothing was live, ``v2 → v-`` after an undeploy."""
    arrow = f"v{before if before is not None else '-'} → v{after if after is not None else '-'}"
    return f"{arrow} (first deploy)" if before is None else arrow


async def _load_everywhere(
    pool: WorkerPool[W], workers: Sequence[W], spec: ModelSpec
) -> tuple[float, float | None, bool] | str:
    """Load and warm in every worker: (slowest load_ms, latest ready_at, whether every worker
    reused a copy it already had: a rollback to the standby), or why it failed (then nothing
    stays staged anywhere)."""
    replies = await pool.load(workers, spec)
    failed = [r for r in replies if not r.ok]
    if failed:
        await pool.discard(workers, spec.name, spec.version)
        return str(failed[0].body.get("error") or "load failed")
    load_ms = max(float(r.body.get("load_ms") or 0) for r in replies)
    stamps = [r.body["ready_at"] for r in replies if isinstance(r.body.get("ready_at"), float)]
    reused = bool(replies) and all(r.body.get("reused") for r in replies)
    return load_ms, (max(stamps) if stamps else None), reused


async def _switch(
    pool: WorkerPool[W],
    workers: Sequence[W],
    name: str,
    spec: ModelSpec | None,
    history: History,
    action: str = "deploy",
    percent: int | None = None,
    rule: CanaryRule | None = None,
) -> None:
    """Activate the staged version (or unload the model, or start / stop its canary) in every
    worker, and mirror it."""
    live = pool.live.get(name)
    if action == "canary" and spec is not None and live is not None:
        pool.live[name] = LiveModel(live.spec, history, spec, percent or 0, rule)
        judged = rule is not None
        replies = await pool.canary(workers, name, spec.version, percent or 0, history, judged)
    elif action == "canary-drop":
        if live is not None:
            pool.live[name] = LiveModel(live.spec, history)
        replies = await pool.canary(workers, name, None, 0, history)
    elif spec is not None:
        pool.live[name] = LiveModel(spec, history)
        replies = await pool.activate(workers, name, spec.version, history)
    else:
        pool.live.pop(name, None)
        replies = await pool.unload(workers, name, history)
    for reply in replies:
        if not reply.ok:  # it died in between: its respawn restores from pool.live
            pool.log.error("worker %d: %s", reply.worker, reply.error)


def parse_manage_body(action: str, raw: bytes) -> tuple[Any, dict]:
    """``(ref, options)`` of a deploy/rollback/undeploy body; InvalidInput names what is wrong."""
    try:
        doc = orjson.loads(raw) if raw and raw.strip() else {}
    except orjson.JSONDecodeError as err:
        raise InvalidInput(f"body is not valid JSON: {err}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("body must be a JSON object")
    if action in ("undeploy", "promote"):
        return None, {}
    if action == "rollback":
        return _rollback_target(doc), {}
    ref = doc.get("ref")
    if ref is not None:
        if isinstance(ref, bool) or not isinstance(ref, int | str) or ref == "":
            raise InvalidInput('"ref" must be a version number, an alias or null')
        if isinstance(ref, int) or is_version_text(ref):
            ref = str(parse_version(ref))
    unknown = set(doc) - {"ref", "canary", "analyze", *DEPLOY_OPTIONS}
    if unknown:
        raise InvalidInput(f"unknown deploy option(s): {clip(', '.join(sorted(unknown)))}")
    options: dict[str, Any] = {}
    canary = doc.get("canary")
    if canary is not None:
        if (
            isinstance(canary, bool)
            or not isinstance(canary, int)
            or not CANARY_MIN <= canary <= CANARY_MAX
        ):
            raise InvalidInput(
                f"canary must be a whole percent between {CANARY_MIN} and {CANARY_MAX}"
            )
        options["canary"] = canary
    analyze = doc.get("analyze")
    if analyze is not None:
        if canary is None:
            raise InvalidInput("analyze judges a canary: give canary (a percent) too")
        rule = CanaryRule.from_wire(analyze)
        check_rule(rule)
        options["analyze"] = rule
    batch, wait = doc.get("max_batch_size"), doc.get("max_wait_ms")
    if batch is not None:
        if (
            isinstance(batch, bool)
            or not isinstance(batch, int)
            or not MAX_BATCH_SIZE_MIN <= batch <= MAX_BATCH_SIZE_MAX
        ):
            raise InvalidInput(
                f"max_batch_size must be a whole number between {MAX_BATCH_SIZE_MIN} "
                f"and {MAX_BATCH_SIZE_MAX}"
            )
        options["max_batch_size"] = batch
    if wait is not None:
        if (
            isinstance(wait, bool)
            or not isinstance(wait, int | float)
            or not MAX_WAIT_MS_MIN <= wait <= MAX_WAIT_MS_MAX
        ):
            raise InvalidInput(
                f"max_wait_ms must be a number between {MAX_WAIT_MS_MIN} and {MAX_WAIT_MS_MAX}"
            )
        options["max_wait_ms"] = float(wait)
    sample = doc.get("log_sample")
    if sample is not None:
        if (
            isinstance(sample, bool)
            or not isinstance(sample, int | float)
            or not LOG_SAMPLE_MIN <= sample <= LOG_SAMPLE_MAX
        ):
            raise InvalidInput(
                f"log_sample must be a share between {LOG_SAMPLE_MIN:g} and {LOG_SAMPLE_MAX:g}"
            )
        options["log_sample"] = float(sample)
    return ref, options


def _rollback_target(doc: dict) -> int | None:
    if set(doc) - {"to"}:
        unknown = ", ".join(sorted(set(doc) - {"to"}))
        raise InvalidInput(f"unknown rollback option(s): {clip(unknown)}")
    to = doc.get("to")
    if to is None:
        return None
    try:
        return parse_version(to)
    except InvalidInput as err:
        raise InvalidInput(f'"to" must be a version number: {err}') from None
