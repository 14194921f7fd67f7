"""Generation benchmark: kernel-magics' generation plane against ``transformers serve
--continuous-batching`` (the peer), with in-process ``model.generate`` as the single-stream
reference.

    .venv/bin/python bench/generate.py [--tokens N] [--streams S] [--quick]

Builds the 4.2 M-parameter Llama of the notebook (BPE tokenizer with vocab 2048 trained on
``pydoc_data``; hidden 256, 4 layers, 4 heads; random weights, seed 0) into one folder, registers
that folder in a throwaway KERNEL_MAGICS_HOME and deploys it, starts the peer on the same folder,
then measures, for each server in turn (never both loaded at once): one stream, then S
concurrent streams (the official ``openai`` async client), greedy, ``max_tokens`` N, the same
prompts. Per stream: time to first text, text chunks; aggregate chunks/s over the wall time of
the S streams. (A chunk is one streamed piece of text: one token on both servers, except where a
token completes no character.) Everything started here is stopped by PID.
Writes ``bench/generate_results.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ["HF_HUB_OFFLINE"] = "1"

from _generate_mlflow import mlflow_serve_info
from _log import log
from _procs import private_home, spawn, stop_children, stop_leftover_server

PROMPTS = [
    "The for statement is used to iterate over",
    "Objects are Python's abstraction for data",
    "A class definition defines a class object",
    "Exceptions are raised when",
]


def build_model(folder: Path) -> None:
    from pydoc_data.topics import topics

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(list(topics.values()), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
    )
    LlamaForCausalLM(config).eval().save_pretrained(str(folder))
    tok.save_pretrained(str(folder))


def in_process(folder: Path, tokens: int) -> float:
    """``model.generate`` at one torch thread, batch 1: tokens/s."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok(PROMPTS[0], return_tensors="pt")["input_ids"]
    kw = {"do_sample": False, "eos_token_id": None, "pad_token_id": 1}
    model.generate(ids, max_new_tokens=4, **kw)
    started = time.perf_counter()
    model.generate(ids, max_new_tokens=tokens, **kw)
    return tokens / (time.perf_counter() - started)


async def streams(base: str, key: str, model: str, count: int, tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base, api_key=key, max_retries=0, timeout=600)

    async def one(i: int) -> tuple[float, int]:
        started = time.perf_counter()
        first, chunks = 0.0, 0
        stream = await client.completions.create(
            model=model,
            prompt=PROMPTS[i % len(PROMPTS)],
            max_tokens=tokens,
            temperature=0,
            stream=True,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                chunks += 1
                first = first or time.perf_counter() - started
        return first, chunks

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(count)), return_exceptions=True)
    wall = time.perf_counter() - started
    await client.close()
    ok = [r for r in results if not isinstance(r, BaseException)]
    ttfts = sorted(r[0] for r in ok)
    return {
        "streams": count,
        "failed": count - len(ok),
        "chunks_per_s": sum(r[1] for r in ok) / wall,
        "ttft_p50_ms": 1000 * statistics.median(ttfts) if ttfts else None,
        "ttft_max_ms": 1000 * ttfts[-1] if ttfts else None,
    }


def measure(name: str, base: str, key: str, model: str, count: int, tokens: int) -> dict:
    asyncio.run(streams(base, key, model, 2, 8))  # warm both paths
    out = {"one": asyncio.run(streams(base, key, model, 1, tokens))}
    out["many"] = asyncio.run(streams(base, key, model, count, tokens))
    log(f"{name}: {out}")
    return out


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="16 tokens, 4 streams")
    args = parser.parse_args()
    tokens, count = (16, 4) if args.quick else (args.tokens, args.streams)
    tmp, home = private_home("km-bench-generate-", KERNEL_MAGICS_AUTOSTART="0")
    folder = tmp / "model"
    results: dict = {"tokens": tokens, "streams": count}
    try:
        build_model(folder)
        results["in_process_generate_tok_s"] = in_process(folder, tokens)
        log(f"in-process generate: {results['in_process_generate_tok_s']:.0f} tok/s")

        from kernel_magics import api

        api.register(str(folder), name="lm")
        api.deploy("lm")
        url = api.server_status().url
        results["ours"] = measure("ours", f"{url}/v1", api.server_token(), "lm", count, tokens)
        api.server_stop()

        from _http import free_port

        port = free_port()
        peer = spawn(
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
            ],
            stdout=open(tmp / "peer.log", "wb"),  # noqa: SIM115
            stderr=open(tmp / "peer.err", "wb"),  # noqa: SIM115
        )
        wait_health(f"http://127.0.0.1:{port}/health", 120)
        peer_base = f"http://127.0.0.1:{port}/v1"
        results["peer"] = measure("peer", peer_base, "none", str(folder), count, tokens)
        peer.terminate()
        results["mlflow_serve"] = mlflow_serve_info("lm", 1, tmp, tokens)  # info: not a peer
    finally:
        stop_children()
        stop_leftover_server(home)
    out = Path(__file__).parent / "generate_results.json"
    out.write_text(json.dumps(results, indent=2))
    print(report(results))


def report(r: dict) -> str:
    rows = [
        "| | ours | transformers serve --continuous-batching | ours ÷ peer |",
        "|---|---:|---:|---:|",
    ]
    for label, part, key in (
        ("1 stream, chunks/s", "one", "chunks_per_s"),
        ("1 stream, TTFT ms", "one", "ttft_p50_ms"),
        (f"{r['streams']} streams, aggregate chunks/s", "many", "chunks_per_s"),
        (f"{r['streams']} streams, TTFT p50 ms", "many", "ttft_p50_ms"),
        (f"{r['streams']} streams, TTFT max ms", "many", "ttft_max_ms"),
        (f"{r['streams']} streams, failed", "many", "failed"),
    ):
        ours, peer = r["ours"][part][key], r.get("peer", {}).get(part, {}).get(key)
        ratio = f"{ours / peer:.2f}×" if ours and peer else "—"
        rows.append(
            f"| {label} | {ours:.0f} | {peer if peer is None else f'{peer:.0f}'} | {ratio} |"
        )
    rows.append(
        f"\nIn-process `model.generate` (1 thread, batch 1): "
        f"{r['in_process_generate_tok_s']:.0f} tok/s; {r['tokens']} new tokens, greedy."
    )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
