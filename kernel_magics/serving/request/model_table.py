"""The table of what one worker serves: the live version of each model, versions staged for a
swap, and the standby (the version live before, kept warm for a rollback)."""

from __future__ import annotations

from kernel_magics.quality.log_writer import Sampler
from kernel_magics.records import HistoryEvent, ModelSpec
from kernel_magics.serving.request.canary import Split
from kernel_magics.serving.request.model import LoadedModel

History = tuple[HistoryEvent, ...]


def model_from_spec(
    spec: ModelSpec, default_batch: int, default_wait_ms: float, default_log_sample: float = 0.0
) -> LoadedModel:
    """A not-yet-loaded model for ``spec``; the worker's settings fill unset serving options."""
    sample = spec.log_sample if spec.log_sample is not None else default_log_sample
    return LoadedModel(
        name=spec.name,
        version=spec.version,
        path=spec.path,
        sha256=spec.sha256,
        task=spec.task,
        format=spec.format,
        max_batch_size=spec.max_batch_size or default_batch,
        max_wait_ms=spec.max_wait_ms if spec.max_wait_ms is not None else default_wait_ms,
        classes=spec.classes,
        sampler=Sampler(sample),
    )


class ModelTable:
    """What one worker serves. Only the event loop thread mutates it, so a swap is one dict
    assignment: a request looks its model up once, and finishes on that version."""

    def __init__(self) -> None:
        self.live: dict[str, LoadedModel] = {}
        self.staged: dict[tuple[str, int], LoadedModel] = {}
        # The version each model served before its live one, still loaded and warm: a rollback
        # to it (the common one) is a dict swap with no load. One per model bounds the memory.
        self.standby: dict[str, LoadedModel] = {}
        self.history: dict[str, History] = {}
        # name → the canary beside the live version (request/canary.py); empty almost always,
        # so the request path tests it for truth before looking a name up
        self.canary: dict[str, Split] = {}

    def stage(self, model: LoadedModel) -> None:
        self.staged[(model.name, model.version)] = model

    def activate(
        self, name: str, version: int, history: History | None
    ) -> tuple[LoadedModel, LoadedModel | None]:
        """Make the staged ``version`` live: (the new live model, the one it replaced)."""
        model = self.staged.pop((name, version), None)
        split = self.canary.pop(name, None)  # any swap ends a canary (promote makes it live)
        if split is not None:
            split.end()
        if model is None and split is not None and split.model.version == version:
            model = split.model
        if model is None:
            current = self.live.get(name)
            if current is None or current.version != version:
                raise KeyError(f"{name} v{version} is not staged in this worker")
            model = current
        previous = self.live.get(name)
        self.live[name] = model
        if previous is not None and previous is not model:
            self.release(self.standby.get(name), keep=previous)
            self.standby[name] = previous
        elif self.standby.get(name) is model:
            del self.standby[name]
        if history is not None:
            self.history[name] = history
        return model, previous

    def set_canary(
        self, name: str, version: int, percent: int, analyze: bool = False
    ) -> LoadedModel | None:
        """Send ``percent`` of ``name``'s requests to the staged ``version`` (or change the
        share of the running canary): the canary it replaced, if another version. ``analyze``:
        record both arms' answers for the supervisor's judge (request/canary.py)."""
        live = self.live.get(name)
        if live is None:
            raise KeyError(f"{name} is not live in this worker: a canary needs a live version")
        current = self.canary.get(name)
        model = self.staged.pop((name, version), None)
        if model is None:
            if current is None or current.model.version != version:
                raise KeyError(f"{name} v{version} is not staged in this worker")
            model = current.model
        if current is not None:
            current.end()
        split = self.canary[name] = Split(model, percent)
        if analyze:
            split.record(live)
        return current.model if current is not None and current.model is not model else None

    def drop_canary(self, name: str) -> LoadedModel | None:
        """Stop the canary of ``name`` (the live version takes all traffic): the dropped one."""
        split = self.canary.pop(name, None)
        if split is None:
            return None
        split.end()
        return split.model

    def discard(self, name: str, version: int | None = None) -> int:
        """Drop staged copies of ``name`` (only ``version``'s when given): how many."""
        keys = [k for k in self.staged if k[0] == name and (version is None or k[1] == version)]
        for key in keys:
            self.release(self.staged.pop(key))
        return len(keys)

    def unload(self, name: str, history: History | None) -> LoadedModel | None:
        """Stop serving ``name``: the model that was live, if any."""
        model = self.live.pop(name, None)
        self.release(self.standby.pop(name, None), keep=model)
        split = self.canary.pop(name, None)
        if split is not None:
            split.end()
        if history is not None:
            self.history[name] = history
        return model

    def release(self, model: LoadedModel | None, keep: LoadedModel | None = None) -> None:
        """Close a model this table no longer holds anywhere (its engine thread, if any)."""
        if model is None or model is keep:
            return
        held = [*self.live.values(), *self.standby.values(), *self.staged.values()]
        held += [split.model for split in self.canary.values()]
        if not any(m is model for m in held):
            model.close()

    def reusable(self, spec: ModelSpec, batch: int, wait_ms: float) -> LoadedModel | None:
        """A loaded model that is exactly what ``spec`` asks for: the live one (a deploy of the
        version already serving) or the standby one (a rollback), else None."""
        wanted = model_from_spec(spec, batch, wait_ms)
        split = self.canary.get(spec.name)
        canary = split.model if split is not None else None
        for current in (self.live.get(spec.name), self.standby.get(spec.name), canary):
            if current is not None and (
                current.version == wanted.version
                and current.sha256 == wanted.sha256
                and current.path == wanted.path
                and current.max_batch_size == wanted.max_batch_size
                and current.max_wait_ms == wanted.max_wait_ms
            ):
                return current
        return None

    def take_arms(self) -> dict[str, dict]:
        """What each judged canary's arms answered since the last call (then forgotten here)."""
        taken = {}
        for name, split in self.canary.items():
            live = self.live.get(name)
            if split.arms is not None and live is not None:
                taken[name] = {
                    "live_version": live.version,
                    "canary_version": split.model.version,
                    "live": split.arms[0].take(),
                    "canary": split.arms[1].take(),
                }
        return taken

    def describe(self, name: str) -> dict:
        history = [e.to_wire() for e in self.history.get(name, ())]
        split = self.canary.get(name)
        canary = split.describe() if split is not None else None
        return {**self.live[name].describe(), "canary": canary, "history": history}

    def version(self, name: str, version: int) -> LoadedModel | None:
        """The live or canary model of ``name`` if it is ``version`` (version-pinned routes)."""
        model = self.live.get(name)
        if model is not None and model.version == version:
            return model
        split = self.canary.get(name)
        return split.model if split is not None and split.model.version == version else None

    def served_versions(self, name: str) -> list[int]:
        """The versions of ``name`` this worker answers with: live first, then the canary."""
        live = self.live.get(name)
        split = self.canary.get(name)
        return [m.version for m in (live, split.model if split else None) if m is not None]
