"""The generation benchmark's operational checks on our server: a hot swap and a rollback under
S streaming clients (failed streams, which version answered each), and the inference process's
resident memory at 0, S and 4·S concurrent streams against the KV-cache budget."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _gen_model import PROMPTS
from _log import log

PROMPT = PROMPTS[0]


async def _stream(client: Any, model: str, tokens: int) -> tuple[str, int]:
    """One greedy stream to its end: the version that answered (``model`` of the chunks,
    NAME@V) and the completion tokens it reported."""
    answered, said = "", 0
    stream = await client.completions.create(
        model=model,
        prompt=PROMPT,
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    async for chunk in stream:
        answered = answered or chunk.model
        if chunk.usage is not None:
            said = chunk.usage.completion_tokens
    return answered, said


async def _round_with(
    client: Any, model: str, streams: int, tokens: int, action: Any, after_s: float
) -> dict:
    """``streams`` streams; ``action`` (blocking, run in a thread) starts ``after_s`` in, while
    they stream; then S more streams begun after it ended."""
    during = [asyncio.create_task(_stream(client, model, tokens)) for _ in range(streams)]
    await asyncio.sleep(after_s)
    started = time.perf_counter()
    await asyncio.to_thread(action)
    took = time.perf_counter() - started
    after = [asyncio.create_task(_stream(client, model, tokens)) for _ in range(streams)]
    done_during = await asyncio.gather(*during, return_exceptions=True)
    done_after = await asyncio.gather(*after, return_exceptions=True)

    def tally(results: list) -> dict:
        ok = [r for r in results if not isinstance(r, BaseException)]
        return {
            "failed": len(results) - len(ok),
            "short": sum(1 for _, said in ok if said != tokens),
            "versions": dict(Counter(v for v, _ in ok)),
        }

    return {"action_s": took, "in_flight": tally(done_during), "begun_after": tally(done_after)}


def _client(base: str, key: str) -> Any:
    import openai

    return openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=600)


def swap_and_rollback(
    base: str, key: str, name: str, folder: Path, streams: int, tokens: int
) -> dict[str, dict]:
    """Register the same folder again (v2), deploy it under ``streams`` streams, then roll
    back to v1 under as many: streams in flight finish on the version that began them, streams
    begun after the action ended get the new one, none fails."""
    from kernel_magics import api

    version = api.register(str(folder), name=name).version  # before: only the swap is timed

    def deploy() -> None:
        api.deploy(name, version)

    async def both() -> dict[str, dict]:
        client = _client(base, key)
        try:
            out = {"deploy": await _round_with(client, name, streams, tokens, deploy, 0.3)}
            out["rollback"] = await _round_with(
                client, name, streams, tokens, lambda: api.rollback(name), 0.3
            )
        finally:
            await client.close()
        return out

    result = asyncio.run(both())
    log(f"swap under {streams} streams: {result}")
    return result


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def serving_pids() -> list[int]:
    """The inference process and its workers (the supervisor's children)."""
    from kernel_magics import api

    status = api.server_status()
    if status is None:
        return []
    pids = [status.pid]
    for task in Path(f"/proc/{status.pid}/task").iterdir():
        children = (task / "children").read_text().split()
        pids += [int(c) for c in children]
    return pids


def rss_by_streams(
    base: str, key: str, name: str, counts: list[int], tokens: int, kv_bytes_per_token: int
) -> dict:
    """Peak resident memory of the inference process while ``count`` streams run, for each
    count (0: idle), sampled every 20 ms, beside the KV-cache budget in bytes."""
    from kernel_magics import api

    pids = serving_pids()

    async def peak_while(count: int) -> tuple[float, int]:
        client = _client(base, key)
        peak = _rss_mb(pids)
        tasks = [asyncio.create_task(_stream(client, name, tokens)) for _ in range(count)]
        while tasks and not all(t.done() for t in tasks):
            peak = max(peak, _rss_mb(pids))
            await asyncio.sleep(0.02)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        return peak, sum(1 for r in results if isinstance(r, BaseException))

    out: dict[str, Any] = {"rss_mb": {}, "failed": {}}
    for count in counts:
        peak, failed = asyncio.run(peak_while(count))
        out["rss_mb"][str(count)] = peak
        out["failed"][str(count)] = failed
    status = api.server_status()
    engine = status.models[name].generation if status and name in status.models else None
    budget = engine.kv_cache_tokens if engine else 0
    out["kv_cache_tokens"] = budget
    out["kv_cache_budget_mb"] = budget * kv_bytes_per_token / 2**20
    log(f"RSS by streams: {out}")
    return out
