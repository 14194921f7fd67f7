"""What the Ray target's replicas are given (``targets/ray.py``): the deployment options that
pin their code version, and the ``user_config`` (live version, canary, share) for what the store
serves now or once a planned transition is done."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernel_magics import __version__

if TYPE_CHECKING:
    from kernel_magics.serving.control.lifecycle import Lifecycle, Plan


def pinned_options(num_cpus: float) -> dict[str, Any]:
    """Deployment options with a fixed code version: Ray then applies a new ``user_config`` to
    the running replicas (``reconfigure``) instead of replacing them, which is what a version
    swap needs. ``serve.run`` otherwise stamps every call with a random version; ``_internal``
    is how Ray's own declarative deploys pass one. The version changes with this package's
    version and its code, so new code does replace the replicas."""
    return {
        "_internal": True,
        "version": code_version(),
        "ray_actor_options": {"num_cpus": num_cpus},
    }


@functools.cache
def code_version() -> str:
    """This package's version and a hash of all its sources: a replica runs far more than
    ``serving/ray_app.py`` (the ``formats`` registry and its loaders, the request codecs, the
    records its configuration is read with), and a change to any of it must reach the replicas
    (reading the package's ~200 files takes milliseconds)."""
    package = Path(__file__).parent.parent
    digest = hashlib.sha256()
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode())
        digest.update(source.read_bytes())
    return f"{__version__}-{digest.hexdigest()[:12]}"


def config_from_store(lifecycle: Lifecycle, name: str) -> dict[str, Any] | None:
    """The replicas' configuration for what the store says ``name`` serves now (None: nothing)."""
    store = lifecycle.store
    live = store.live_version(name) if store.model_exists(name) else None
    if live is None:
        return None
    canary = lifecycle.canary_spec(name)
    return {
        "live": lifecycle.spec_for(store.resolve(name, live)).to_wire(),
        "canary": canary[0].to_wire() if canary else None,
        "percent": canary[1] if canary else 0,
    }


def config_after(lifecycle: Lifecycle, plan: Plan) -> dict[str, Any] | None:
    """What the replicas serve once ``plan`` is done (None: the model is undeployed)."""
    if plan.action == "undeploy":
        return None
    if plan.action == "canary":  # beside the live version, which stays
        assert plan.spec is not None
        assert plan.from_version is not None
        live = lifecycle.spec_for(lifecycle.store.resolve(plan.name, plan.from_version))
        return {"live": live.to_wire(), "canary": plan.spec.to_wire(), "percent": plan.canary}
    if plan.action == "canary-drop":
        assert plan.to_version is not None
        live = lifecycle.spec_for(lifecycle.store.resolve(plan.name, plan.to_version))
        return {"live": live.to_wire(), "canary": None, "percent": 0}
    assert plan.spec is not None
    return {"live": plan.spec.to_wire(), "canary": None, "percent": 0}
