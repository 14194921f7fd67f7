"""Dynamic batching (``request/batcher.py``): the real inference thread and event loop, with a
small model object standing in for a LoadedModel (the batcher only calls ``forward``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from kit.model_dirs import run_loop

from kernel_magics.serving.request.batcher import Batcher, InferenceThread, Item


class Doubler:
    """``forward(x) = 2x``; records each batch's shape; fails on a batch holding a negative
    first value, or returning ``wrong_rows`` rows when set."""

    def __init__(self, wrong_rows: int | None = None):
        self.batches: list[tuple[int, ...]] = []
        self.wrong_rows = wrong_rows

    def forward(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch.shape)
        if (batch.reshape(len(batch), -1)[:, 0] < 0).any():
            raise ValueError("negative input")
        if self.wrong_rows is not None:
            return np.zeros((self.wrong_rows, *batch.shape[1:]), batch.dtype)
        return batch * 2


Submit = Callable[..., Awaitable[np.ndarray]]


def run(scenario: Callable[[InferenceThread, Submit], Awaitable[None]]) -> None:
    """Run ``scenario(engine, submit)`` on a uvloop loop; ``submit(batcher, array, raw=False)``
    queues one request at once and returns an awaitable of its output (raises its error)."""

    async def go() -> None:
        engine = InferenceThread(asyncio.get_running_loop())

        def submit(batcher: Batcher, array: np.ndarray, raw: bool = False) -> asyncio.Future:
            future = asyncio.get_running_loop().create_future()

            def done(out: np.ndarray | None, err: BaseException | None) -> None:
                if err is not None:
                    future.set_exception(err)
                else:
                    future.set_result(out)

            engine.submit(batcher, Item(array, done, raw=raw))
            return future

        try:
            await asyncio.wait_for(scenario(engine, submit), 10)
        finally:
            engine.stop()
            engine.thread.join(5)
            assert not engine.thread.is_alive()

    run_loop(go())


def one_row(value: float, features: int = 3) -> np.ndarray:
    return np.full((1, features), value, dtype=np.float32)


def test_a_lone_request_is_answered():
    model = Doubler()

    async def scenario(engine: InferenceThread, submit: Submit) -> None:
        out = await submit(Batcher(model, 8, 0.0), np.ones((2, 3), np.float32))
        np.testing.assert_array_equal(out, np.full((2, 3), 2, np.float32))

    run(scenario)
    assert model.batches == [(2, 3)]


def test_requests_waiting_together_share_one_forward_and_each_gets_its_rows():
    model = Doubler()

    async def scenario(engine: InferenceThread, submit: Submit) -> None:
        batcher = Batcher(model, 10, max_wait_ms=2000)  # takes once 10 rows are queued
        futures = [submit(batcher, one_row(i)) for i in range(10)]
        outs = await asyncio.gather(*futures)
        for i, out in enumerate(outs):
            np.testing.assert_array_equal(out, one_row(2 * i))

    run(scenario)
    assert model.batches == [(10, 3)]


def test_max_batch_size_caps_a_batch_and_max_wait_bounds_the_wait():
    model = Doubler()

    async def scenario(engine: InferenceThread, submit: Submit) -> None:
        batcher = Batcher(model, 10, max_wait_ms=100)
        outs = await asyncio.gather(*(submit(batcher, one_row(i)) for i in range(25)))
        assert [float(o[0, 0]) for o in outs] == [2.0 * i for i in range(25)]

    run(scenario)
    assert [shape[0] for shape in model.batches] == [10, 10, 5]


def test_only_requests_with_the_same_trailing_shape_are_concatenated():
    """A signature with a free non-batch dimension (sequences of any length): requests of
    different lengths never share a forward, and keep their order."""
    model = Doubler()

    async def scenario(engine: InferenceThread, submit: Submit) -> None:
        batcher = Batcher(model, 5, max_wait_ms=2000)  # takes once all five are queued
        lengths = (4, 4, 7, 7, 4)
        futures = [submit(batcher, np.ones((1, t, 3), np.float32)) for t in lengths]
        outs = await asyncio.gather(*futures)
        assert [o.shape for o in outs] == [(1, t, 3) for t in lengths]

    run(scenario)
    assert model.batches == [(2, 4, 3), (2, 7, 3), (1, 4, 3)]


def test_a_raw_request_runs_alone_and_exactly_as_given():
    model = Doubler()

    async def scenario(engine: InferenceThread, submit: Submit) -> None:
        batcher = Batcher(model, 64, max_wait_ms=50)
        futures = [submit(batcher, one_row(1)), submit(batcher, one_row(2), raw=True)]
        futures.append(submit(batcher, one_row(3)))
        outs = await asyncio.gather(*futures)
        assert [float(o[0, 0]) for o in outs] == [2.0, 4.0, 6.0]

    run(scenario)
    assert sorted(shape[0] for shape in model.batches) == [1, 1, 1]


def test_a_failing_request_does_not_fail_its_batch_mates():
    model = Doubler()

    async def scenario(engine: InferenceThread, submit: Submit) -> None:
        batcher = Batcher(model, 3, max_wait_ms=2000)
        good1, bad, good2 = (submit(batcher, one_row(v)) for v in (1.0, -1.0, 2.0))
        np.testing.assert_array_equal(await good1, one_row(2.0))
        np.testing.assert_array_equal(await good2, one_row(4.0))
        with pytest.raises(ValueError, match="negative input"):
            await bad

    run(scenario)
    # one batch of 3 failed; each request ran again alone
    assert [shape[0] for shape in model.batches] == [3, 1, 1, 1]


def test_a_model_answering_the_wrong_number_of_rows_is_an_error():
    async def scenario(engine: InferenceThread, submit: Submit) -> None:
        with pytest.raises(ValueError, match="model returned 1 rows for 2 input rows"):
            await submit(Batcher(Doubler(wrong_rows=1), 8, 0.0), np.ones((2, 3), np.float32))

    run(scenario)


def test_models_take_turns():
    first, second = Doubler(), Doubler()

    async def scenario(engine: InferenceThread, submit: Submit) -> None:
        a, b = Batcher(first, 1, 0.0), Batcher(second, 1, 0.0)
        futures = [submit(batcher, one_row(1)) for _ in range(4) for batcher in (a, b)]
        await asyncio.gather(*futures)

    run(scenario)
    assert len(first.batches) == len(second.batches) == 4
