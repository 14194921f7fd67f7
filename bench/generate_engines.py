"""In-process comparison of the two continuous-batching engines on one model: kernel-magics'
``Engine`` (generative/engine.py) and transformers' continuous-batching manager, set up as
``transformers serve --continuous-batching`` sets it up (``init_continuous_batching`` with the
context length as workload hint, ``per_request_processors``, warmed up and started once, then
streaming requests), both at one torch thread, greedy, the same prompts. No HTTP: this measures
the engines themselves, which is what chose ours (docs/generative.md).

    .venv/bin/python bench/generate_engines.py [--sizes 4m,30m] [--tokens N] [--rounds R]

Prints per size and engine: tokens/s for 1 and 16 concurrent requests (the best of R rounds,
alternating the engines round by round so that the machine's load falls on both alike) and
the time to the first output of 16 requests.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ["HF_HUB_OFFLINE"] = "1"

from _gen_model import PROMPTS, build_model

Run = Callable[[list[list[int]], int], float]  # (prompts, tokens) -> seconds to the first output


def ours(model: object, tok: object) -> tuple[Run, Callable[[], None]]:
    from kernel_magics.generative.engine import Engine
    from kernel_magics.generative.sampling import SamplingParams
    from kernel_magics.generative.sequence import Sequence

    engine = Engine(model, tok, max_running=16, kv_cache_tokens=32768, max_queued=64, name="b")

    def run(prompts: list[list[int]], tokens: int) -> float:
        left, done, first = [len(prompts)], threading.Event(), []
        started = time.perf_counter()

        def on_event(seq: Sequence, delta: str, finish: str | None) -> None:
            if not first:
                first.append(time.perf_counter() - started)
            if finish is not None:
                left[0] -= 1
                if not left[0]:
                    done.set()

        for ids in prompts:
            engine.submit(
                Sequence(ids, SamplingParams(max_tokens=tokens, temperature=0.0), on_event)
            )
        done.wait()
        return first[0]

    return run, engine.stop


def manager(model: object, tok: object, tokens: int) -> tuple[Run, Callable[[], None]]:
    from transformers import ContinuousBatchingConfig, GenerationConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    model.generation_config = GenerationConfig(  # type: ignore[attr-defined]
        max_new_tokens=tokens, do_sample=False, eos_token_id=None, pad_token_id=1
    )
    config = ContinuousBatchingConfig()
    config.per_request_processors = True
    hints = WorkloadHints(max_prompt_length=model.config.max_position_embeddings)  # type: ignore[attr-defined]
    mgr = model.init_continuous_batching(continuous_batching_config=config, workload_hints=hints)  # type: ignore[attr-defined]
    mgr.warmup()
    mgr.start()

    def run(prompts: list[list[int]], tokens: int) -> float:
        started, first = time.perf_counter(), 0.0
        for ids in prompts:
            mgr.add_request(ids, max_new_tokens=tokens, streaming=True)
        done = 0
        while done < len(prompts):
            out = mgr.get_result(timeout=5)
            if out is None:
                continue
            first = first or time.perf_counter() - started
            done += out.is_finished()
        return first

    return run, lambda: mgr.stop(block=True)


def main() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="4m,30m")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for size in args.sizes.split(","):
        folder = Path(tempfile.mkdtemp(prefix="km-engines-")) / size
        build_model(folder, size)
        tok = AutoTokenizer.from_pretrained(str(folder))
        engines = {
            "ours": ours(AutoModelForCausalLM.from_pretrained(str(folder)).eval(), tok),
            "transformers manager": manager(
                AutoModelForCausalLM.from_pretrained(str(folder)).eval(), tok, args.tokens
            ),
        }
        best: dict[tuple[str, int], tuple[float, float]] = {}
        for _ in range(args.rounds):
            for count in (1, 16):
                prompts = [tok(PROMPTS[i % 4])["input_ids"] for i in range(count)]
                for name, (run, _) in engines.items():
                    run(prompts[:2], 4)  # warm
                    started = time.perf_counter()
                    first = run(prompts, args.tokens)
                    rate = count * args.tokens / (time.perf_counter() - started)
                    old = best.get((name, count), (0.0, 0.0))
                    best[(name, count)] = max(old, (rate, 1000 * first))
        for (name, count), (rate, first) in sorted(best.items()):
            print(f"{size} {name}: {count} requests {rate:,.0f} tok/s, first output {first:.0f} ms")
        for _, stop in engines.values():
            stop()


if __name__ == "__main__":
    main()
