"""A judged canary's per-arm recording in a worker (``request/canary.py``): while the split runs,
both versions' metrics objects are copies that also tell their arm; a split that is not judged,
and every version once the split ends, keeps its own metrics object (the request path pays
nothing for a feature it does not use)."""

from __future__ import annotations

from kernel_magics.records import ModelSpec
from kernel_magics.serving.request import metrics
from kernel_magics.serving.request.model import LoadedModel
from kernel_magics.serving.request.model_table import ModelTable, model_from_spec


def version(n: int) -> LoadedModel:
    model = model_from_spec(ModelSpec("arms", n, "/nowhere", "x"), 8, 0.0)
    model.stats = metrics.ModelStats("arms", n)
    return model


def table_with_canary(analyze: bool) -> tuple[ModelTable, LoadedModel, LoadedModel, tuple]:
    """v1 live, v2 its canary at 50%; and both versions' own metrics objects."""
    table, live, canary = ModelTable(), version(1), version(2)
    table.stage(live)
    table.activate("arms", 1, None)
    table.stage(canary)
    own = (live.stats, canary.stats)
    table.set_canary("arms", 2, 50, analyze)
    return table, live, canary, own


def answer(model: LoadedModel, seconds: float, failed: bool = False) -> None:
    """What app.py's ``done`` calls on the model's stats for one answer."""
    stats = model.stats
    if failed:
        stats.model_errors.inc()
    stats.requests.inc()
    stats.latency.observe(seconds)


def test_a_canary_that_is_not_judged_keeps_both_metrics_objects() -> None:
    table, live, canary, own = table_with_canary(analyze=False)
    assert (live.stats, canary.stats) == own
    answer(live, 0.001)
    assert table.take_arms() == {}


def test_a_judged_canary_records_each_arm_then_gives_the_metrics_objects_back() -> None:
    table, live, canary, (own_live, own_canary) = table_with_canary(analyze=True)
    assert live.stats is not own_live
    answer(live, 0.002)
    answer(canary, 0.040, failed=True)
    answer(canary, 0.030)
    taken = table.take_arms()["arms"]
    assert (taken["live_version"], taken["canary_version"]) == (1, 2)
    assert taken["live"]["latencies_ms"] == [2.0]
    assert taken["canary"]["latencies_ms"] == [40.0, 30.0]
    assert taken["canary"]["failed"] == [1, 0]  # the failure marks its own answer only
    assert table.take_arms()["arms"]["canary"]["times"] == []  # taken once
    table.drop_canary("arms")
    assert live.stats is own_live
    assert canary.stats is own_canary
    assert table.take_arms() == {}


def test_promoting_a_judged_canary_gives_it_its_own_metrics_object() -> None:
    table, live, canary, (own_live, own_canary) = table_with_canary(analyze=True)
    table.activate("arms", 2, None)
    assert canary.stats is own_canary
    assert live.stats is own_live
