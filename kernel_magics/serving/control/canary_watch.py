"""The judge of canaries, in the supervisor: a timer, off the request path.

Every ``canary_judge_interval_s`` it takes from each worker what the judged canaries' arms
answered since the last look (``/_control/arms``; the workers record only while a judged canary
runs), keeps each arm's answers over the rule's window, and asks ``quality.canary_judge.decide``.
A decision is carried out as ``%promote`` / ``%rollback`` would (``run_transition``, under the
model's lock), with the reason and the figures in the history event and the log.

The analysis of each canary is written to ``home/canary/NAME.json`` at every look with new
answers; a restarted process reads it back for the canary it restores (same versions, same rule),
so a restart neither loses the answers counted so far nor starts the window again. The rule itself
lives in the store with the canary (``Lifecycle``'s ``km.canary.rule``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from kernel_magics.config import Settings
from kernel_magics.errors import InvalidInput
from kernel_magics.naming import is_valid_name
from kernel_magics.quality.canary_judge import (
    Arms,
    ArmSamples,
    Decision,
    decide,
    reference_profile,
)
from kernel_magics.records import CanaryRule
from kernel_magics.serving.control.transitions import LiveModel, run_transition
from kernel_magics.serving.files import write_atomic

if TYPE_CHECKING:
    from kernel_magics.serving.control.lifecycle import Lifecycle
    from kernel_magics.serving.process.pool import WorkerProcesses

log = logging.getLogger("kernel_magics.serving.supervisor")
# Most answers kept per arm (the newest); a window of heavy traffic is judged on its latest ones.
ARM_KEEP = 200_000


@dataclass
class Analysis:
    """One judged canary's answers so far, per arm."""

    live_version: int
    canary_version: int
    rule: CanaryRule
    live: ArmSamples
    canary: ArmSamples
    changed: bool = False  # answers arrived since it was last written
    profile: Any = None  # the drift metric's reference (read once, when the rule names drift)
    profile_read: bool = False

    def matches(self, live: LiveModel) -> bool:
        return live.canary is not None and (self.live_version, self.canary_version, self.rule) == (
            live.spec.version,
            live.canary.version,
            live.canary_rule,
        )

    def prune(self, now: float) -> None:
        window = self.rule.window_s or 0.0
        for arm in ("live", "canary"):
            samples: ArmSamples = getattr(self, arm)
            kept = samples.since(now - window)
            if kept.requests > ARM_KEEP:
                kept = ArmSamples(
                    kept.times[-ARM_KEEP:], kept.latencies_ms[-ARM_KEEP:], kept.failed[-ARM_KEEP:]
                )
            if kept.requests != samples.requests:
                self.changed = True
            setattr(self, arm, kept)

    def to_wire(self) -> dict[str, Any]:
        return {
            "live_version": self.live_version,
            "canary_version": self.canary_version,
            "rule": self.rule.to_wire(),
            "live": self.live.to_wire(),
            "canary": self.canary.to_wire(),
        }


class CanaryWatch:
    def __init__(
        self,
        pool: WorkerProcesses,
        lifecycle: Callable[[], Awaitable[Lifecycle]],
        settings: Settings,
    ):
        self.pool = pool
        self.lifecycle = lifecycle
        self.settings = settings
        self.analyses: dict[str, Analysis] = {}

    async def run(self) -> None:
        """Look every ``canary_judge_interval_s`` until cancelled."""
        interval = max(0.05, self.settings.canary_judge_interval_s)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.look()
            except Exception:  # the judge must never take the process down
                log.exception("judging the canaries failed; trying again in %.1f s", interval)

    async def look(self) -> None:
        judged = {
            name: live
            for name, live in self.pool.live.items()
            if live.canary is not None and live.canary_rule is not None
        }
        for name in [n for n in self.analyses if n not in judged]:
            self._forget(name)  # promoted, dropped or replaced by someone
        if not judged:
            return
        for name, live in judged.items():
            current = self.analyses.get(name)
            if current is None or not current.matches(live):
                self.analyses[name] = self._restored(name, live) or _fresh(live)
        workers = self.pool.ready_workers()
        taken = await asyncio.gather(*(self.pool.arms(w) for w in workers))
        for doc in taken:
            for name, arms in doc.items():
                self._add(name, arms)
        now = time.time()
        for name, live in judged.items():
            analysis = self.analyses[name]
            analysis.prune(now)
            if analysis.changed:
                self._save(name, analysis)
            if "drift" in analysis.rule.metrics and not analysis.profile_read:
                assert live.canary is not None
                folders = (live.spec.path, live.canary.path)
                analysis.profile = await asyncio.to_thread(reference_profile, *folders)
                analysis.profile_read = True
            assert analysis.rule.window_s is not None  # filled in when the canary started
            arms = Arms(
                name,
                analysis.live_version,
                analysis.canary_version,
                analysis.live,
                analysis.canary,
                now - analysis.rule.window_s,
                self.settings,
                analysis.profile,
            )
            # off the loop: a metric may read the inference log
            decision = await asyncio.to_thread(decide, analysis.rule, arms)
            if decision is not None:
                await self._act(name, analysis, decision)

    def _add(self, name: str, arms: Any) -> None:
        analysis = self.analyses.get(name)
        if analysis is None or not isinstance(arms, dict):
            return
        if (arms.get("live_version"), arms.get("canary_version")) != (
            analysis.live_version,
            analysis.canary_version,
        ):
            return  # answered before a swap this analysis does not cover
        for arm in ("live", "canary"):
            new = ArmSamples.from_wire(arms.get(arm))
            if new.requests:
                samples: ArmSamples = getattr(analysis, arm)
                samples.times += new.times
                samples.latencies_ms += new.latencies_ms
                samples.failed += new.failed
                analysis.changed = True

    async def _act(self, name: str, analysis: Analysis, decision: Decision) -> None:
        action = "promote" if decision.action == "promote" else "rollback"
        outcome: dict[str, Any] = {}

        def answer(status: int, body: dict) -> None:
            outcome.update(status=status, body=body)

        await run_transition(
            self.pool,
            self.lifecycle,
            name,
            action,
            b"",
            answer,
            reason=decision.reason,
            evidence=decision.evidence,
            expect_canary=analysis.canary_version,
        )
        if outcome.get("status") != 200:
            error = (outcome.get("body") or {}).get("error")
            log.error("%s: the judged %s did not happen: %s", name, action, error)
        # done, or it failed: either way this analysis is over (a canary still running after a
        # failed transition is judged again from fresh answers)
        self._forget(name)

    # -- the analysis on disk -------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        return self.settings.canary_dir / f"{name}.json"

    def _save(self, name: str, analysis: Analysis) -> None:
        try:
            write_atomic(self._path(name), orjson.dumps(analysis.to_wire()).decode())
            analysis.changed = False
        except OSError as err:  # a full disk costs the analysis its restart, never the judging
            log.warning("%s: could not keep the canary analysis: %s", name, err)

    def _restored(self, name: str, live: LiveModel) -> Analysis | None:
        """The analysis a previous process kept for this very canary, if any."""
        if not is_valid_name(name):
            return None
        try:
            doc = orjson.loads(self._path(name).read_bytes())
            analysis = Analysis(
                int(doc["live_version"]),
                int(doc["canary_version"]),
                CanaryRule.from_wire(doc["rule"]),
                ArmSamples.from_wire(doc.get("live")),
                ArmSamples.from_wire(doc.get("canary")),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, InvalidInput) as err:
            log.warning("%s: the kept canary analysis is unreadable (%s); afresh", name, err)
            return None
        if not analysis.matches(live):
            return None
        log.info(
            "%s: canary analysis restored (%d live, %d canary answers)",
            name,
            analysis.live.requests,
            analysis.canary.requests,
        )
        return analysis

    def _forget(self, name: str) -> None:
        self.analyses.pop(name, None)
        with contextlib.suppress(OSError):
            self._path(name).unlink()


def _fresh(live: LiveModel) -> Analysis:
    assert live.canary is not None
    assert live.canary_rule is not None
    return Analysis(
        live.spec.version, live.canary.version, live.canary_rule, ArmSamples(), ArmSamples()
    )
