"""Generation benchmark: kernel-magics' generation plane against ``transformers serve
--continuous-batching`` (the peer), with in-process ``model.generate`` as the single-stream
reference, on two model sizes.

    .venv/bin/python bench/generate.py [--sizes 4m,30m] [--dtypes float32,bfloat16]
                                       [--tokens N] [--streams S] [--rounds R]
                                       [--only ours|peer] [--no-ops] [--quick]
                                       [--distinct-prompts] [--no-prefix-cache]

For each size (``_gen_model.SIZES``: the notebook's 4.2 M-parameter Llama and a ≈ 30 M one,
random weights, the notebook's BPE tokenizer) it builds one model folder; for each precision of
``--dtypes`` it starts ours (the folder registered in a throwaway KERNEL_MAGICS_HOME and
deployed, setting ``gen_dtype``) and the peer on the same folder (``--dtype``), both loaded and
idle but for the server measured, and measures round by round, the servers taking turns:
in-process ``model.generate`` at one torch thread, batch 1, in the same precision; each
server's one stream (R rounds; the median), then S concurrent streams (R rounds) with the
official ``openai`` async client (one client per server, its S connections opened by a
warm-up), greedy, ``max_tokens`` N, the same prompts. Per
stream: time to first text (TTFT) and text chunks; aggregate chunks/s over each round's wall
time (the median round); TTFT percentiles over all rounds' streams. A chunk is one streamed
piece of text: one token on both servers, except where a token completes no character.
Then, on ours (``--no-ops`` skips it): a deploy of a new version and a rollback, each while S
streams run (failed streams; the version each stream got), and the inference process's peak
resident memory at 0, S and 4·S concurrent streams beside the KV-cache budget. Everything started
here is stopped by PID. Writes ``bench/generate_results.json`` and
``bench/results-generate.md`` (the ratio table and the command that made it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ["HF_HUB_OFFLINE"] = "1"

from _gen_model import PROMPTS, SIZES, build_model, kv_bytes_per_token
from _gen_ops import rss_by_streams, swap_and_rollback
from _gen_report import write_report
from _generate_mlflow import mlflow_serve_info
from _log import log
from _procs import private_home, spawn, stop_children, stop_leftover_server


class InProcess:
    """``model.generate`` at one torch thread, batch 1, in this process."""

    def __init__(self, folder: Path, dtype: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)
        model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
        self.model = model.to(getattr(torch, dtype))
        tok = AutoTokenizer.from_pretrained(str(folder))
        self.ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
        self.rate(4)

    def rate(self, tokens: int) -> float:
        """Tokens/s of one greedy generation of ``tokens`` new tokens."""
        started = time.perf_counter()
        self.model.generate(
            self.ids, max_new_tokens=tokens, do_sample=False, eos_token_id=None, pad_token_id=1
        )
        return tokens / (time.perf_counter() - started)


# perf_counter of each request the clients put on the wire (their httpx "request" hook): how
# long the client itself takes to send a burst of S requests, a floor under any server's TTFT
SENT: list[float] = []


async def _on_request(_: object) -> None:
    SENT.append(time.perf_counter())


def _client(base: str, key: str) -> object:
    import openai

    http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [_on_request]})
    return openai.AsyncOpenAI(
        base_url=base, api_key=key, max_retries=0, timeout=600, http_client=http
    )


DISTINCT = [False]  # --distinct-prompts


def prompt_for(i: int) -> str:
    """Stream ``i``'s prompt: the 4 prompts in turn, or with --distinct-prompts each one its
    own (a request number after it), so that no two requests in flight share a prompt."""
    prompt = PROMPTS[i % len(PROMPTS)]
    return f"{prompt} (request {i})" if DISTINCT[0] else prompt


async def streams(client: object, model: str, count: int, tokens: int) -> dict:
    async def one(i: int) -> tuple[float, int, int]:
        started = time.perf_counter()
        first, chunks, tokens_said = 0.0, 0, 0
        stream = await client.completions.create(  # type: ignore[attr-defined]
            model=model,
            prompt=prompt_for(i),
            max_tokens=tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                chunks += 1
                first = first or time.perf_counter() - started
            if chunk.usage is not None:
                tokens_said = chunk.usage.completion_tokens
        return first, chunks, tokens_said

    SENT.clear()
    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    wall = time.perf_counter() - started
    last_sent = max(SENT, default=started) - started
    ok = [r for r in results if not isinstance(r, BaseException)]
    said = [r[2] for r in ok]
    return {
        "failed": count - len(ok),
        "chunks_per_s": sum(r[1] for r in ok) / wall,
        # the tokens the server says it generated (usage), where every stream said it
        "tokens_per_s": sum(said) / wall if all(said) else None,
        "ttfts_ms": [1000 * r[0] for r in ok],
        "last_sent_ms": 1000 * last_sent,
    }


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank: with 48 values p99 is the largest."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(runs: list[dict]) -> dict:
    ttfts = [t for r in runs for t in r["ttfts_ms"]]
    return {
        "runs": len(runs),
        "failed": sum(r["failed"] for r in runs),
        "chunks_per_s": statistics.median(r["chunks_per_s"] for r in runs),
        "tokens_per_s": None
        if any(r["tokens_per_s"] is None for r in runs)
        else statistics.median(r["tokens_per_s"] for r in runs),
        "chunks_per_s_runs": [round(r["chunks_per_s"], 1) for r in runs],
        "ttft_p50_ms": percentile(ttfts, 50),
        "ttft_p99_ms": percentile(ttfts, 99),
        # the latest any round's last request left the client
        "last_sent_ms": max(r["last_sent_ms"] for r in runs),
    }


async def measure(
    servers: dict[str, tuple[str, str, str]], generate: InProcess, args: argparse.Namespace
) -> dict:
    """Every case of every server, round by round, the servers alternating (and which goes
    first): a change of the machine's load during the run falls on all of them alike. One
    client per server for the whole run, as an application keeps one: its connection pool is
    opened by the warm-up (S streams), so no round pays TCP connects, on either server."""
    clients = {name: (_client(base, key), model) for name, (base, key, model) in servers.items()}
    one: dict[str, list] = {name: [] for name in servers}
    many: dict[str, list] = {name: [] for name in servers}
    rates = []
    try:
        for client, model in clients.values():
            await streams(client, model, args.streams, 8)  # warm both paths, open S connections
        # This process holds torch, transformers and the in-process model: a full collection
        # of its heap paused the client for up to 375 ms in the middle of sending a burst
        # (a request's head sent, its body not), which then counted as either server's TTFT.
        gc.collect()
        gc.freeze()
        for round_ in range(args.rounds):
            rates.append(generate.rate(args.tokens))
            for name in _order(servers, round_):
                one[name].append(await warm_round(*clients[name], 1, args.tokens))
        for round_ in range(args.rounds):
            for name in _order(servers, round_):
                many[name].append(await warm_round(*clients[name], args.streams, args.tokens))
    finally:
        for client, _ in clients.values():
            await client.close()
    out: dict = {"in_process_generate_tok_s": statistics.median(rates)}
    out["in_process_generate_runs"] = [round(r, 1) for r in rates]
    for name in servers:
        out[name] = {"one": summary(one[name]), "many": summary(many[name])}
    return out


async def warm_round(client: object, model: str, count: int, tokens: int) -> dict:
    """A measured round of ``count`` streams, after ``count`` unmeasured 2-token streams. On
    this class of VM memory left untouched for half a second or more is slow to read again
    (120 MB: 8 ms warm, 65-220 ms after 1-2 s idle; user time, no page faults in the guest:
    the host's doing), so a server's weights and KV cache go cold while the other server takes
    its round. A server under steady traffic keeps them warm: each is measured that way."""
    await streams(client, model, count, 2)
    return await streams(client, model, count, tokens)


def _order(servers: dict, round_: int) -> list[str]:
    names = list(servers)
    return names if round_ % 2 == 0 else names[::-1]


def wait_health(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def start_ours(folder: Path, name: str, dtype: str) -> tuple[str, str, str]:
    from kernel_magics import api

    os.environ["KERNEL_MAGICS_GEN_DTYPE"] = dtype  # read by the inference process it starts
    api.register(str(folder), name=name)
    api.deploy(name)
    return f"{api.server_status().url}/v1", api.server_token(), name


def start_peer(folder: Path, case: str, dtype: str, tmp: Path) -> tuple[str, str, str]:
    from _http import free_port

    port = free_port()
    spawn(
        [
            str(Path(sys.executable).parent / "transformers"),
            "serve",
            str(folder),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
            "--continuous-batching",
            "--dtype",
            dtype,
        ],
        stdout=open(tmp / f"peer-{case}.log", "wb"),  # noqa: SIM115
        stderr=open(tmp / f"peer-{case}.err", "wb"),  # noqa: SIM115
    )
    wait_health(f"http://127.0.0.1:{port}/health", 120)
    return f"http://127.0.0.1:{port}/v1", "none", str(folder)


def measure_case(folder: Path, name: str, dtype: str, tmp: Path, args: argparse.Namespace) -> dict:
    from kernel_magics import api

    servers = {}
    try:
        if args.only != "peer":
            servers["ours"] = start_ours(folder, name, dtype)
        if args.only != "ours":
            servers["peer"] = start_peer(folder, name, dtype, tmp)
        part = asyncio.run(measure(servers, InProcess(folder, dtype), args))
        if "ours" in servers and not args.no_ops:
            base, key, _ = servers["ours"]
            part["ops"] = {
                "swap": swap_and_rollback(base, key, name, folder, args.streams, args.tokens),
                "memory": rss_by_streams(
                    base,
                    key,
                    name,
                    [0, args.streams, 4 * args.streams],
                    args.tokens,
                    kv_bytes_per_token(folder, dtype),
                ),
            }
        return part
    finally:
        if "ours" in servers:
            try:  # the next case's server then serves its model alone, as the peer does
                api.undeploy(name)
            finally:
                api.server_stop()
        stop_children()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="4m,30m", help=f"among {', '.join(SIZES)}")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="served precisions")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--only", choices=("ours", "peer"), help="one server (no report file)")
    parser.add_argument("--no-ops", action="store_true", help="no swap or memory checks")
    parser.add_argument("--quick", action="store_true", help="4m, 16 tokens, 4 streams, 1 round")
    parser.add_argument(
        "--no-prefix-cache",
        action="store_true",
        help="ours without its prefix cache (report printed, not written)",
    )
    parser.add_argument(
        "--distinct-prompts",
        action="store_true",
        help="no two streams share a prompt (report printed, not written)",
    )
    args = parser.parse_args()
    DISTINCT[0] = args.distinct_prompts
    if args.no_prefix_cache:  # read by the inference process ours starts
        os.environ["KERNEL_MAGICS_GEN_PREFIX_CACHE_TOKENS"] = "0"
    if args.quick:
        args.sizes, args.tokens, args.streams, args.rounds = "4m", 16, 4, 1
    sizes = args.sizes.split(",")
    tmp, home = private_home("km-bench-generate-", KERNEL_MAGICS_AUTOSTART="0")
    results: dict = {
        "command": "bench/generate.py " + " ".join(sys.argv[1:]),
        "tokens": args.tokens,
        "streams": args.streams,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg()[0],
        "prefix_cache": not args.no_prefix_cache,
        "sizes": {},
    }
    try:
        for size in sizes:
            folder = tmp / f"model-{size}"
            params = build_model(folder, size)
            for dtype in args.dtypes.split(","):
                case, name = f"{size} {dtype}", f"lm-{size}-{dtype}"
                part = {"parameters": params, "dtype": dtype}
                part.update(measure_case(folder, name, dtype, tmp, args))
                results["sizes"][case] = part
                log(f"{case} ({params / 1e6:.1f} M): {part}")
                # info, not a peer: MLflow's own server of the version (its checkpoint's dtype)
                if args.only != "peer" and dtype == "float32":
                    part["mlflow_serve"] = mlflow_serve_info(name, 1, tmp, args.tokens)
                    log(f"{case} mlflow models serve: {part['mlflow_serve']}")
    finally:
        stop_children()
        stop_leftover_server(home)
    results["load_after"] = os.getloadavg()[0]
    if args.only:  # a partial run: printed, the committed figures stay those of a full run
        print(json.dumps(results, indent=2))
        return
    if args.distinct_prompts or args.no_prefix_cache:  # printed: the committed report is the
        # default workload's
        print(write_report(results, Path(tempfile.mkdtemp()) / "results-generate-variant.md"))
        return
    here = Path(__file__).parent
    (here / "generate_results.json").write_text(json.dumps(results, indent=2))
    print(write_report(results, here / "results-generate.md"))


if __name__ == "__main__":
    main()
