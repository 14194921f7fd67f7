"""Deploy / rollback / undeploy logic (``control/transitions.py``) against an in-memory worker
pool (the one stand-in here: the logic is the unit) and a real ``Lifecycle`` over a temporary
MLflow SQLite store."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from kit.model_dirs import run_loop
from kit.serving import MLP, log_model, rows

from kernel_magics.config import Settings, load_settings
from kernel_magics.errors import InvalidInput
from kernel_magics.records import ModelSpec
from kernel_magics.serving.control.lifecycle import Lifecycle
from kernel_magics.serving.control.transitions import (
    History,
    LiveModel,
    Reply,
    WorkerPool,
    parse_manage_body,
    run_transition,
)
from kernel_magics.serving.deploy_options import MAX_BATCH_SIZE_MAX, MAX_WAIT_MS_MAX

NAME = "toy"


@dataclass
class FakeWorker:
    index: int
    ready: bool = True


class MemoryPool:
    """A ``WorkerPool`` in memory: what each worker has staged and serves, every call made.
    ``refuse_load`` / ``gone_at_activate``: worker indexes that fail those steps."""

    log = logging.getLogger("tests.memory_pool")

    def __init__(self, workers: int = 2):
        self.workers = [FakeWorker(i) for i in range(workers)]
        self.live: dict[str, LiveModel] = {}
        self.locks: dict[str, asyncio.Lock] = {}
        self.staged: dict[int, set[tuple[str, int]]] = {i: set() for i in range(workers)}
        self.serving: dict[int, dict[str, int]] = {i: {} for i in range(workers)}
        self.calls: list[tuple[str, int]] = []
        self.refuse_load: set[int] = set()
        self.gone_at_activate: set[int] = set()

    def ready_workers(self) -> list[FakeWorker]:
        return [w for w in self.workers if w.ready]

    def lock(self, name: str) -> asyncio.Lock:
        return self.locks.setdefault(name, asyncio.Lock())

    async def load(self, workers: Sequence[FakeWorker], spec: ModelSpec) -> list[Reply]:
        replies = []
        for w in workers:
            self.calls.append(("load", w.index))
            if w.index in self.refuse_load:
                replies.append(Reply(w.index, 409, {"error": f"{spec.name} cannot load here"}))
                continue
            self.staged[w.index].add((spec.name, spec.version))
            replies.append(Reply(w.index, 200, {"load_ms": 1.5, "ready_at": time.time()}))
        return replies

    async def discard(
        self, workers: Sequence[FakeWorker], name: str, version: int | None
    ) -> list[Reply]:
        for w in workers:
            self.calls.append(("discard", w.index))
            self.staged[w.index] = {k for k in self.staged[w.index] if k != (name, version)}
        return [Reply(w.index, 200, {}) for w in workers]

    async def activate(
        self, workers: Sequence[FakeWorker], name: str, version: int, history: History
    ) -> list[Reply]:
        replies = []
        for w in workers:
            self.calls.append(("activate", w.index))
            if w.index in self.gone_at_activate:
                replies.append(Reply(w.index, 503, {"error": f"worker {w.index} did not answer"}))
                continue
            self.staged[w.index].discard((name, version))
            self.serving[w.index][name] = version
            replies.append(Reply(w.index, 200, {}))
        return replies

    async def unload(
        self, workers: Sequence[FakeWorker], name: str, history: History
    ) -> list[Reply]:
        for w in workers:
            self.calls.append(("unload", w.index))
            self.serving[w.index].pop(name, None)
        return [Reply(w.index, 200, {}) for w in workers]


@pytest.fixture(scope="module")
def settings(km_home: Path) -> Settings:
    return load_settings()


@pytest.fixture(scope="module")
def lifecycle(settings: Settings) -> Lifecycle:
    """Two registered versions of ``toy``."""
    for seed in (1, 2):
        log_model(settings, NAME, MLP(seed=seed), rows(4, seed=seed))
    return Lifecycle(settings)


@pytest.fixture
def life(lifecycle: Lifecycle) -> Lifecycle:
    """The lifecycle with ``toy`` not deployed (whatever the test before left)."""
    if lifecycle.store.live_version(NAME) is not None:
        lifecycle.commit(lifecycle.plan(NAME, "undeploy"))
    return lifecycle


class Call:
    """One management call through ``run_transition``: its answer, and what the store's
    history held at the moment of answering."""

    def __init__(self, life: Lifecycle):
        self.life = life
        self.status: int | None = None
        self.body: dict[str, Any] = {}
        self.history_when_answered: int | None = None

    def answer(self, status: int, body: dict) -> None:
        assert self.status is None, "answered twice"
        self.status, self.body = status, body
        self.history_when_answered = len(self.life.store.history(NAME))

    async def lifecycle(self) -> Lifecycle:
        return self.life

    async def run(
        self, pool: WorkerPool[FakeWorker], action: str, body: dict | None = None
    ) -> Call:
        raw = orjson.dumps(body) if body is not None else b""
        await run_transition(pool, self.lifecycle, NAME, action, raw, self.answer)
        assert self.status is not None, "never answered"
        return self


def transition(
    life: Lifecycle, pool: WorkerPool[FakeWorker], action: str, body: dict | None = None
) -> Call:
    return run_loop(Call(life).run(pool, action, body))


def test_deploy_loads_everywhere_then_switches_and_answers_before_the_history_write(life):
    pool = MemoryPool()
    events_before = len(life.store.history(NAME))
    call = transition(life, pool, "deploy", {"ref": "1", "max_batch_size": 8})
    assert call.status == 200, call.body
    assert call.body["version"] == 1
    assert call.body["previous_version"] is None
    assert call.body["load_ms"] == 1.5
    assert isinstance(call.body["ready_at"], float)
    assert call.body["history"][-1]["to_version"] == 1
    assert [c[0] for c in pool.calls] == ["load", "load", "activate", "activate"]
    assert pool.serving == {0: {NAME: 1}, 1: {NAME: 1}}
    live = pool.live[NAME]
    assert live.spec.version == 1
    assert live.spec.format == "pt2"
    assert live.spec.max_batch_size == 8
    assert live.history[-1].to_version == 1
    assert life.store.live_version(NAME) == 1
    # the answer went out before the event was appended; it is there once the call finished
    assert call.history_when_answered == events_before
    assert len(life.store.history(NAME)) == events_before + 1


def test_rollback_returns_to_the_previous_version(life):
    pool = MemoryPool()
    transition(life, pool, "deploy", {"ref": 1})
    transition(life, pool, "deploy", {"ref": 2})
    call = transition(life, pool, "rollback")
    assert (call.status, call.body["version"], call.body["previous_version"]) == (200, 1, 2)
    assert pool.serving[0][NAME] == 1
    assert pool.live[NAME].spec.version == 1
    call = transition(life, pool, "rollback", {"to": 2})
    assert (call.status, call.body["version"]) == (200, 2)


def test_deploying_the_live_version_changes_nothing_and_rollback_skips_it(life):
    pool = MemoryPool()
    transition(life, pool, "deploy", {"ref": 1})
    transition(life, pool, "deploy", {"ref": 2})
    events = len(life.store.history(NAME))
    pool.calls.clear()
    for body in ({"ref": 2}, {"ref": "2"}, None):  # None: the newest, v2 too
        call = transition(life, pool, "deploy", body)
        assert call.status == 200, call.body
        assert call.body["unchanged"] is True, call.body
        assert (call.body["version"], call.body["previous_version"]) == (2, 2)
    call = transition(life, pool, "rollback", {"to": 2})
    assert call.status == 200
    assert call.body["unchanged"] is True
    assert pool.calls == []  # nothing loaded, activated or discarded
    assert len(life.store.history(NAME)) == events  # nothing recorded
    call = transition(life, pool, "rollback")
    assert (call.status, call.body["version"], call.body["previous_version"]) == (200, 1, 2)
    assert "unchanged" not in call.body


def test_the_live_version_the_process_does_not_serve_is_loaded_again(life):
    transition(life, MemoryPool(), "deploy", {"ref": 2})
    fresh = MemoryPool()  # a restarted process that could not restore v2: it serves nothing
    call = transition(life, fresh, "deploy", {"ref": 2})
    assert call.status == 200
    assert "unchanged" not in call.body
    assert fresh.serving == {0: {NAME: 2}, 1: {NAME: 2}}


def test_new_serving_options_for_the_live_version_apply_and_rollback_skips_them(life):
    pool = MemoryPool()
    transition(life, pool, "deploy", {"ref": 1})
    transition(life, pool, "deploy", {"ref": 2})
    call = transition(life, pool, "deploy", {"ref": 2, "max_batch_size": 7})
    assert call.status == 200
    assert "unchanged" not in call.body
    assert pool.live[NAME].spec.max_batch_size == 7
    events = life.store.history(NAME)
    assert (events[-1]["from_version"], events[-1]["to_version"]) == (2, 2)
    call = transition(life, pool, "rollback")  # past the v2 → v2 event, to the version before
    assert (call.status, call.body["version"]) == (200, 1)


def test_a_version_failing_to_load_anywhere_is_discarded_everywhere(life):
    pool = MemoryPool()
    transition(life, pool, "deploy", {"ref": 1})
    pool.refuse_load = {1}
    pool.calls.clear()
    call = transition(life, pool, "deploy", {"ref": 2})
    assert call.status == 409
    assert call.body["error"] == f"{NAME} cannot load here"
    assert [c[0] for c in pool.calls] == ["load", "load", "discard", "discard"]
    assert pool.staged == {0: set(), 1: set()}
    assert pool.serving == {0: {NAME: 1}, 1: {NAME: 1}}  # v1 keeps serving
    assert pool.live[NAME].spec.version == 1
    assert life.store.live_version(NAME) == 1


def test_undeploy_unloads_and_clears_the_mirror(life):
    pool = MemoryPool()
    transition(life, pool, "deploy", {})
    call = transition(life, pool, "undeploy")
    assert (call.status, call.body["version"], call.body["previous_version"]) == (200, None, 2)
    assert NAME not in pool.live
    assert pool.serving == {0: {}, 1: {}}
    assert life.store.live_version(NAME) is None
    assert transition(life, pool, "undeploy").status == 400  # not deployed


def test_a_worker_gone_at_activation_does_not_fail_the_call(life, caplog):
    pool = MemoryPool()
    pool.gone_at_activate = {0}
    with caplog.at_level(logging.ERROR, logger=MemoryPool.log.name):
        call = transition(life, pool, "deploy", {"ref": 1})
    assert call.status == 200
    assert pool.serving[1] == {NAME: 1}
    assert pool.live[NAME].spec.version == 1  # its respawn restores from the mirror
    assert "worker 0: worker 0 did not answer" in caplog.text


def test_refusals_change_nothing(life):
    pool = MemoryPool()
    assert transition(life, pool, "deploy", {"ref": "99"}).status == 404
    assert transition(life, pool, "rollback").status == 400  # nothing deployed
    for worker in pool.workers:
        worker.ready = False
    call = transition(life, pool, "deploy", {"ref": 1})
    assert call.status == 503
    assert "restarting" in call.body["error"]
    assert pool.calls == []
    assert not pool.live
    assert life.store.live_version(NAME) is None


def test_a_bad_body_is_refused_before_the_store_is_asked(life):
    async def no_store() -> Lifecycle:
        raise AssertionError("the store must not be asked")

    answers: list[tuple[int, dict]] = []
    for action, raw in (("deploy", b"{oops"), ("deploy", b'{"nope": 1}'), ("rollback", b"[1]")):
        run_loop(
            run_transition(MemoryPool(), no_store, NAME, action, raw, lambda *a: answers.append(a))
        )
    assert [status for status, _ in answers] == [400, 400, 400]


def test_concurrent_calls_on_one_model_run_one_at_a_time(life):
    pool = MemoryPool()
    transition(life, pool, "deploy", {"ref": 1})

    async def both() -> tuple[Call, Call]:
        deploy = Call(life).run(pool, "deploy", {"ref": 2})
        rollback = Call(life).run(pool, "rollback")
        return await asyncio.gather(deploy, rollback)

    deploy, rollback = run_loop(both())
    assert (deploy.status, deploy.body["version"]) == (200, 2)
    # the rollback planned after the deploy's history event was written: back to v1
    assert (rollback.status, rollback.body["version"], rollback.body["previous_version"]) == (
        200,
        1,
        2,
    )


@pytest.mark.parametrize(
    ("action", "body", "expected"),
    [
        ("deploy", b"", (None, {})),
        ("deploy", b'{"ref": 3}', ("3", {})),
        ("deploy", b'{"ref": "prod", "max_wait_ms": 0}', ("prod", {"max_wait_ms": 0.0})),
        ("deploy", b'{"max_batch_size": %d}' % MAX_BATCH_SIZE_MAX,
         (None, {"max_batch_size": 1 << 20})),
        ("deploy", b'{"max_wait_ms": %d}' % MAX_WAIT_MS_MAX, (None, {"max_wait_ms": 10000.0})),
        ("rollback", b'{"to": "2"}', (2, {})),
        ("undeploy", b'{"anything": 1}', (None, {})),
    ],
)  # fmt: skip
def test_parse_manage_body(action, body, expected):
    assert parse_manage_body(action, body) == expected


@pytest.mark.parametrize(
    ("action", "body", "message"),
    [
        ("deploy", b'{"max_batch_size": 0}', "max_batch_size must be a whole number between 1"),
        ("deploy", b'{"max_batch_size": %d}' % (MAX_BATCH_SIZE_MAX + 1), "and 1048576"),
        ("deploy", b'{"max_batch_size": true}', "max_batch_size"),
        ("deploy", b'{"max_wait_ms": -1}', "max_wait_ms must be a number between 0 and 10000"),
        ("deploy", b'{"max_wait_ms": 10001}', "between 0 and 10000"),
        ("deploy", b'{"ref": ""}', '"ref" must be'),
        ("deploy", b'{"ref": [1]}', '"ref" must be'),
        ("rollback", b'{"to": "x"}', '"to" must be a version number'),
        ("rollback", b'{"to": "%s"}' % (b"9" * 5000), "out of range"),
        ("deploy", b'{"ref": "%s"}' % (b"9" * 5000), "versions are 1 to 999999999"),
        ("rollback", b'{"to": 1, "x": 2}', "unknown rollback option(s): x"),
        ("deploy", b"null", "JSON object"),
    ],
)
def test_parse_manage_body_refusals(action, body, message):
    with pytest.raises(InvalidInput) as info:
        parse_manage_body(action, body)
    assert message in str(info.value)
