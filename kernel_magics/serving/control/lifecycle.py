"""Deployment state transitions: what deploy, rollback and undeploy mean against the store.

The supervisor of the inference process runs these, one model at a time under its per-model
lock, in steps around loading: ``plan`` resolves and verifies the target version (nothing
changes yet), the workers load and warm it, ``make_live`` moves the live alias, the workers
activate it, and ``record`` appends the history event (after the caller has its answer: the
model's lock is held until it is written, so the next transition sees it). A version that fails
to load is never made live, so the store and the process agree on what is live.
``live_specs`` rebuilds what a restarted process must serve from the store alone.

This is the boundary with the store: it returns history events as ``records.HistoryEvent``
(what crosses the pipe to the workers); the store itself speaks dicts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from kernel_magics.config import Settings
from kernel_magics.deploy_events import transition_event
from kernel_magics.errors import InvalidInput, KernelMagicsError, NotFound
from kernel_magics.formats.verified import verified_folder
from kernel_magics.quality.canary_judge import check_rule, filled, reference_profile
from kernel_magics.records import CanaryRule, HistoryEvent, ModelSpec
from kernel_magics.store import (
    TAG_CANARY_VERDICT,
    TAG_FORMAT,
    Store,
    VersionInfo,
    not_found,
    validate_name,
)

log = logging.getLogger(__name__)
ACTIONS = ("deploy", "rollback", "undeploy", "promote")
# A canary runs beside the live alias (``production``): the registry alias ``canary`` names its
# version and the version's tag ``km.canary`` its share, so a restarted process restores the
# split. Its history events ("canary", "canary-drop") never make a version live. A canary the
# process judges by itself also carries its rule (``km.canary.rule``, JSON), restored the same way.
CANARY_ALIAS = "canary"
TAG_CANARY = "km.canary"
TAG_CANARY_RULE = "km.canary.rule"
CANARY_EVENTS = ("canary", "canary-drop")


@dataclass(frozen=True)
class Plan:
    name: str
    action: str
    spec: ModelSpec | None
    from_version: int | None
    to_version: int | None
    # History as it stood when planned. The supervisor holds the model's lock from plan to
    # commit, so commit can append its event without reading the store again: that keeps the
    # time between "loaded and warm" and "live" short.
    history: tuple[HistoryEvent, ...] = ()
    # Serving options given explicitly to this deploy (recorded on the version at make_live).
    options: tuple[tuple[str, object], ...] = ()
    # The canary's share (percent) for action "canary"; None otherwise.
    canary: int | None = None
    # Action "canary" judged by the process: its rule, every figure filled in.
    rule: CanaryRule | None = None
    # A transition the process made by itself says why (HistoryEvent.reason / evidence).
    reason: str | None = None
    evidence: dict[str, Any] | None = None
    # A deploy (or rollback --to) of the version that is already live, with the options it
    # already serves with and no canary running: nothing loads, nothing moves, nothing is
    # recorded. A recorded "v2 → v2" would make the next rollback return to v2 itself.
    unchanged: bool = False


class Lifecycle:
    def __init__(self, settings: Settings, store: Store | None = None):
        self.settings = settings
        self.store = store or Store(settings)

    def spec_for(self, info: VersionInfo, **options: float) -> ModelSpec:
        """Local path of a version, verified against the hash recorded at registration."""
        path = verified_folder(self.store, info)
        sha256 = info.sha256 or ""  # never empty: verified_folder refuses a version without one
        # explicit options win; else what the version's last deploy asked for; else defaults
        recorded = info.serve_options
        batch = options.get("max_batch_size", recorded.get("max_batch_size"))
        wait = options.get("max_wait_ms", recorded.get("max_wait_ms"))
        sample = options.get("log_sample", recorded.get("log_sample"))
        return ModelSpec(
            name=info.name,
            version=info.version,
            path=str(path),
            sha256=sha256,
            task=info.task,
            # picks the worker's loader; None for versions registered before the tag existed
            format=info.tags.get(TAG_FORMAT),
            max_batch_size=int(batch) if batch is not None else None,
            max_wait_ms=float(wait) if wait is not None else None,
            classes=tuple(info.classes) if info.classes else None,
            log_sample=float(sample) if sample is not None else None,
        )

    def rollback_target(
        self, name: str, live: int | None, history: tuple[HistoryEvent, ...]
    ) -> int:
        """The version that was live before the current one (the newest event that made the
        current version live names it); rolling back twice therefore returns to where it began.
        Events from a version to itself (a re-deploy with other serving options, or one recorded
        before re-deploying the live version became a no-op) never name a target."""
        if live is None:
            raise InvalidInput(f"{name} is not deployed; nothing to roll back")
        for event in reversed(history):
            if event.action in CANARY_EVENTS or event.from_version == event.to_version:
                continue
            if event.to_version == live and event.from_version is not None:
                return event.from_version
        raise InvalidInput(f"{name} has no earlier live version to roll back to; use --to VERSION")

    def plan(
        self,
        name: str,
        action: str,
        ref: str | int | None = None,
        canary: int | None = None,
        *,
        analyze: CanaryRule | None = None,
        **options: Any,
    ) -> Plan:
        """What ``action`` does. Besides the three swaps: a deploy with ``canary`` becomes
        action "canary" (load beside the live version, the alias stays); "promote" makes the
        running canary live; a rollback without a target while a canary runs becomes
        "canary-drop" (the live version keeps all traffic)."""
        validate_name(name)
        if action not in ACTIONS:
            raise InvalidInput(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")
        live = self.store.live_version(name) if self.store.model_exists(name) else None
        running = self.canary_version(name) if live is not None else None
        if action == "promote" or (action == "rollback" and ref is None and running):
            return self._canary_end(name, action, live, running)
        if analyze is not None and canary is None:
            raise InvalidInput("analyze judges a canary: give canary (a percent) too")
        if canary is not None:
            return self._canary_start(name, ref, canary, live, options, analyze)
        if action == "undeploy":
            if not self.store.model_exists(name):
                raise NotFound(not_found(name, self.store.model_names()))
            if live is None:
                raise InvalidInput(f"{name} is not deployed")
            return Plan(name, action, None, live, None, self.history(name))
        if action == "rollback":
            if not self.store.model_exists(name):
                raise NotFound(not_found(name, self.store.model_names()))
            history = self.history(name)
            target = int(ref) if ref is not None else self.rollback_target(name, live, history)
            info = self.store.resolve(name, target)
        else:
            info = self.store.resolve(name, ref)
            history = self.history(name)
        spec = self.spec_for(info, **options)
        changed = tuple(
            (k, v) for k, v in sorted(options.items()) if info.serve_options.get(k) != v
        )
        unchanged = info.version == live and not changed and running is None
        return Plan(name, action, spec, live, info.version, history, changed, unchanged=unchanged)

    def _canary_start(
        self,
        name: str,
        ref: str | int | None,
        percent: int,
        live: int | None,
        options: dict,
        analyze: CanaryRule | None = None,
    ) -> Plan:
        if live is None:
            raise InvalidInput(f"{name} is not deployed: deploy a version before a canary")
        info = self.store.resolve(name, ref)
        if info.version == live:
            raise InvalidInput(f"{name} v{live} is the live version; a canary needs another")
        spec = self.spec_for(info, **options)
        changed = tuple(
            (k, v) for k, v in sorted(options.items()) if info.serve_options.get(k) != v
        )
        history = self.history(name)
        rule = None
        if analyze is not None:
            check_rule(analyze)
            rule = filled(analyze, self.settings)
            if "drift" in rule.metrics:
                live_spec = self.spec_for(self.store.resolve(name, live))
                if reference_profile(live_spec.path, spec.path) is None:
                    raise InvalidInput(
                        f"the drift metric compares predictions with a reference profile, and "
                        f"neither {name} v{live} nor v{info.version} has one: register with "
                        "--reference X (or %train it)"
                    )
        return Plan(name, "canary", spec, live, info.version, history, changed, percent, rule)

    def _canary_end(self, name: str, action: str, live: int | None, running: int | None) -> Plan:
        if running is None:
            raise InvalidInput(f"{name} has no canary running; nothing to {action}")
        history = self.history(name)
        if action == "rollback":  # drop the canary: nothing loads, the live version stays
            return Plan(name, "canary-drop", None, running, live, history)
        spec = self.spec_for(self.store.resolve(name, running))
        return Plan(name, "promote", spec, live, running, history)

    def canary_version(self, name: str) -> int | None:
        """The version the registry alias ``canary`` names, if any."""
        aliases = self.store.client.get_registered_model(name).aliases or {}
        version = aliases.get(CANARY_ALIAS)
        return int(version) if version is not None else None

    def canary_spec(self, name: str) -> tuple[ModelSpec, int, CanaryRule | None] | None:
        """The canary a restarted process restores beside ``name``'s live version, its share
        and the rule it is judged by (None: not judged); None when none runs (or it no longer
        passes its hash check)."""
        version = self.canary_version(name)
        if version is None:
            return None
        try:
            info = self.store.resolve(name, version)
            percent = int(info.tags.get(TAG_CANARY) or 0)
            raw_rule = info.tags.get(TAG_CANARY_RULE)
            rule = CanaryRule.from_wire(json.loads(raw_rule)) if raw_rule else None
            return (self.spec_for(info), percent, rule) if percent else None
        except (KernelMagicsError, ValueError) as err:
            log.error("not restoring the canary %s v%s: %s", name, version, err)
            return None

    def _set_canary(
        self,
        name: str,
        version: int | None,
        percent: int | None,
        rule: CanaryRule | None = None,
    ) -> None:
        client = self.store.client
        with self.store.write_lock():
            if version is None:
                if CANARY_ALIAS in (client.get_registered_model(name).aliases or {}):
                    client.delete_registered_model_alias(name, CANARY_ALIAS)
            else:
                client.set_model_version_tag(name, str(version), TAG_CANARY, str(percent))
                if rule is not None:
                    text = json.dumps(rule.to_wire())
                    client.set_model_version_tag(name, str(version), TAG_CANARY_RULE, text)
                elif TAG_CANARY_RULE in (client.get_model_version(name, str(version)).tags or {}):
                    # an earlier judged canary of this version must not judge this one
                    client.delete_model_version_tag(name, str(version), TAG_CANARY_RULE)
                client.set_registered_model_alias(name, CANARY_ALIAS, str(version))

    def make_live(self, plan: Plan) -> tuple[HistoryEvent, tuple[HistoryEvent, ...]]:
        """Move the live alias (the source of truth a restarted process rebuilds from), or for
        a canary the ``canary`` alias. Returns the event and the history including it;
        ``record`` writes the event later."""
        if plan.options and plan.to_version is not None:
            self.store.set_serve_options(plan.name, plan.to_version, dict(plan.options))
        judged = plan.from_version if plan.action == "canary-drop" else plan.to_version
        if plan.reason and judged is not None:
            with self.store.write_lock():
                self.store.client.set_model_version_tag(
                    plan.name, str(judged), TAG_CANARY_VERDICT, plan.reason[:5000]
                )
        if plan.action == "canary":
            self._set_canary(plan.name, plan.to_version, plan.canary, plan.rule)
        else:  # every other transition ends a running canary (promote makes it live)
            if self.store.model_exists(plan.name) and self.canary_version(plan.name) is not None:
                self._set_canary(plan.name, None, None)
            if plan.action != "canary-drop":
                self.store.set_live(plan.name, plan.to_version)
        event = HistoryEvent.from_wire(
            transition_event(
                plan.action, plan.from_version, plan.to_version, plan.reason, plan.evidence
            )
        )
        return event, (*plan.history, event)

    def record(self, plan: Plan, event: HistoryEvent) -> None:
        """Append the event to the deployment history in the store."""
        self.store.append_event(plan.name, event.to_wire())

    def commit(self, plan: Plan) -> list[dict]:
        """``make_live`` then ``record``: the whole transition in one call (for callers that
        drive the store directly); the history as ``Store.history`` lists it."""
        event, history = self.make_live(plan)
        self.record(plan, event)
        return [e.to_wire() for e in history]

    def live_specs(self) -> list[ModelSpec]:
        """What a (re)started inference process must serve. A version that fails its hash check
        is left out (and reported by the caller) rather than stopping every other model."""
        specs = []
        for name, version in sorted(self.store.live_models().items()):
            try:
                specs.append(self.spec_for(self.store.resolve(name, version)))
            except KernelMagicsError as err:
                log.error("not restoring %s v%s: %s", name, version, err)
        return specs

    def history(self, name: str) -> tuple[HistoryEvent, ...]:
        return tuple(HistoryEvent.from_wire(e) for e in self.store.history(validate_name(name)))
