"""A language model from the notebook's side, through the real inference process: ``%chat``
(one static turn, the session's turns and messages, Stop freeing the slot), ``%train --text``
(a model trained on a corpus, registered and served), and the generation figures of
``%monitor`` and ``/metrics``."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest
import requests

from kernel_magics import api
from kernel_magics.targets.local import LocalTarget
from kernel_magics.widgets.chat import ChatSession

SYSTEM = "You answer about Python."


@pytest.fixture(scope="module")
def served(client: LocalTarget, lm: Any, tokenizer: Any) -> str:
    api.register(lm, tokenizer=tokenizer, name="tiny")
    api.deploy("tiny")
    return "tiny"


def generation(client: LocalTarget, name: str = "tiny") -> dict:
    """The engine's counters of ``name`` as ``GET /v1/models`` reports them."""
    doc = requests.get(f"{client.url}/v1/models", timeout=10).json()
    (model,) = [m for m in doc["models"] if m["name"] == name]
    return model["generation"]


def test_chat_magic_answers_one_turn_as_text(ip: Any, served: str, capsys: Any) -> None:
    ip.run_line_magic("chat", 'tiny "What is a list?" --max-tokens 6 --temperature 0')
    lines = capsys.readouterr().out.rstrip("\n").split("\n")
    assert lines[0] == "you: What is a list?"
    assert lines[1].startswith("tiny: ")
    assert len(lines[1]) > len("tiny: ")
    assert lines[-1].startswith("[tiny@1: 6 tokens (length), time to first token")


def test_chat_without_message_and_without_widgets_is_one_line(ip: Any, served: str) -> None:
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match='give the message, %chat NAME "MESSAGE"'):
        ip.run_line_magic("chat", "tiny")


def test_session_keeps_turns_and_sends_the_whole_conversation(served: str, tokenizer: Any) -> None:
    session = ChatSession("tiny", system=SYSTEM, max_tokens=5, temperature=0)
    first = session.send("Hello")
    pieces: list[str] = []
    second = session.send("And then?", on_text=pieces.append)
    assert [t.user for t in session.turns] == ["Hello", "And then?"]
    assert "".join(pieces) == second.assistant
    assert session.messages_for("Third") == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": first.assistant},
        {"role": "user", "content": "And then?"},
        {"role": "assistant", "content": second.assistant},
        {"role": "user", "content": "Third"},
    ]
    # the server saw exactly those messages through the plain template: as many prompt tokens
    plain = "".join(
        f"{m['role']}: {m['content'].strip()}\n" for m in session.messages_for("Hi")[:-1]
    )
    third = session.send("Hi")
    expected = len(tokenizer(plain + "user: Hi\nassistant:")["input_ids"])
    assert third.result.prompt_tokens == expected
    assert session.transcript_text().splitlines()[:3] == [
        f"system: {SYSTEM}",
        "you: Hello",
        f"tiny: {first.assistant}",
    ]


def test_stop_closes_the_stream_and_frees_the_slot(client: LocalTarget, served: str) -> None:
    before = generation(client)
    session = ChatSession("tiny", max_tokens=400, temperature=0)
    cancel = threading.Event()
    arrived = threading.Event()

    def on_text(piece: str) -> None:
        arrived.set()

    done: list[Any] = []
    worker = threading.Thread(
        target=lambda: done.append(session.send("Go on", on_text=on_text, cancel=cancel))
    )
    worker.start()
    assert arrived.wait(30)
    cancel.set()  # what the widget's Stop does
    worker.join(30)
    (turn,) = done
    assert turn.stopped
    assert turn.result.finish_reason == "cancelled"
    assert session.turns == [turn]  # kept, with the part that arrived
    deadline = time.monotonic() + 20
    while generation(client)["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    state = generation(client)
    assert state["running"] == 0
    assert state["kv_cache_reserved"] == 0
    assert state["cancelled"] == before["cancelled"] + 1  # dropped at a step, not run to the end
    assert state["generated_tokens"] - before["generated_tokens"] < 400


def test_chat_widget_streams_a_turn_and_stops_one(served: str) -> None:
    from kernel_magics.widgets.chat import ChatWidget

    widget = ChatWidget(ChatSession("tiny", max_tokens=5, temperature=0))
    widget.input.value = "What is a tuple?"
    widget.send()
    assert widget.send_button.disabled  # one turn at a time
    assert widget._thread is not None
    widget._thread.join(30)
    (turn,) = widget.session.turns
    assert "What is a tuple?" in widget.transcript.value
    assert "[tiny@1: 5 tokens (length)" in widget.status.value
    assert widget.input.value == ""
    assert (widget.send_button.disabled, widget.stop_button.disabled) == (False, True)
    # Stop during a long answer: the turn ends "cancelled" and is marked in the transcript
    widget.session.sampling["max_tokens"] = 400
    widget.send("Go on")
    deadline = time.monotonic() + 30

    def streaming() -> bool:  # the cursor follows some text of the answer
        value = widget.transcript.value
        return "▍" in value and not value.endswith("<b>tiny</b>: ▍</div></div>")

    while not streaming():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    widget.stop()
    widget._thread.join(30)
    assert widget.session.turns[-1].stopped
    assert "(stopped)" in widget.transcript.value


@pytest.fixture(scope="module")
def corpus() -> str:
    """About 3 KB of CPython's help texts (shipped with Python)."""
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))[:3000]


def test_train_text_lowers_the_loss_and_registers_a_served_version(
    ip: Any, client: LocalTarget, served: str, tokenizer: Any, corpus: str, capsys: Any
) -> None:
    from kit.tiny_lm import tiny_llama

    ip.user_ns.update(fresh=tiny_llama(seed=1), tok=tokenizer, corpus=corpus)
    result = ip.run_line_magic(
        "train",
        "fresh --text corpus --tokenizer tok --block-size 32 --epochs 2 --lr 3e-3 "
        "--batch-size 8 --name tinytext",
    )
    losses = [epoch["val_loss"] for epoch in result.history]
    assert losses[1] < losses[0]  # on held-out blocks
    assert result.history[1]["perplexity"] == pytest.approx(math.exp(losses[1]))
    assert (result.name, result.version, result.format) == ("tinytext", 1, "transformers")
    (summary,) = [m for m in api.models() if m.name == "tinytext"]
    (row,) = summary.versions
    assert row.metrics["perplexity"] == pytest.approx(result.metrics["perplexity"])
    assert api.run_params(result.run_id)["block_size"] == "32"
    api.deploy("tinytext")
    capsys.readouterr()
    ip.run_line_magic("generate", 'tinytext "The for statement" --max-tokens 5 --seed 1')
    figures = capsys.readouterr().out.rstrip().rpartition("\n")[2]
    assert figures.startswith("[tinytext@1: 5 tokens (length)")
    # unloaded, its engine's gauges read 0 rather than their last state
    headers = {"authorization": f"Bearer {client.token()}"}
    budget = 'km_generation_kv_cache_budget_tokens{model="tinytext",version="1"} '
    metrics = requests.get(f"{client.url}/metrics", headers=headers, timeout=10).text
    assert budget + "32768.0" in metrics
    api.undeploy("tinytext")
    metrics = requests.get(f"{client.url}/metrics", headers=headers, timeout=10).text
    assert budget + "0.0" in metrics


def test_train_text_bad_input_is_one_line(ip: Any, tokenizer: Any) -> None:
    from IPython.core.error import UsageError
    from kit.tiny_lm import tiny_llama

    ip.user_ns.update(fresh=tiny_llama(seed=1), tok=tokenizer)
    with pytest.raises(UsageError, match="fewer than 2 blocks of 32"):
        ip.run_line_magic("train", "fresh --text 'short' --tokenizer tok --block-size 32")
    with pytest.raises(UsageError, match="--text needs --tokenizer"):
        ip.run_line_magic("train", "fresh --text 'short'")
    with pytest.raises(UsageError, match="over the model's context length of 512"):
        ip.run_line_magic("train", "fresh --text 'short' --tokenizer tok --block-size 600")


def test_monitor_shows_generation_figures(client: LocalTarget, served: str, settings: Any) -> None:
    from kernel_magics.display.rates import generation_rates
    from kernel_magics.widgets.monitor import ServiceMonitor, snapshot_views

    monitor = ServiceMonitor(settings, "tiny", interval_s=0.2)
    monitor.tick()
    earlier = api.server_status()
    for seed in range(3):
        api.generate("tiny", "The for statement", max_tokens=8, seed=seed)
    # one stream held open while the snapshot is taken: the engine is busy
    cancel, arrived = threading.Event(), threading.Event()
    worker = threading.Thread(
        target=api.generate,
        args=("tiny", "Go on"),
        kwargs={
            "max_tokens": 400,
            "temperature": 0,
            "on_text": lambda _: arrived.set(),
            "cancel": cancel,
        },
    )
    worker.start()
    assert arrived.wait(30)
    busy = api.server_status()
    monitor.tick()
    cancel.set()
    worker.join(30)
    (row,) = generation_rates(earlier, busy, "tiny")
    assert row.tokens_s is not None
    assert row.tokens_s > 0
    assert row.tokens >= 24
    for quantile in (row.ttft_p50_ms, row.ttft_p99_ms, row.inter_token_p99_ms):
        assert quantile is not None
        assert quantile > 0
    assert row.running == 1
    assert row.kv_cache_reserved > 0
    assert row.kv_cache_use is not None
    assert row.kv_cache_use > 0
    assert (row.dtype, row.threads) == ("float32", 1)  # the tiny model: torch_threads
    # the widget's table and plot, and the text view of one snapshot
    assert "TTFT p50 ms" in monitor.body.value
    assert "float32, 1 thread" in monitor.body.value
    assert "tokens/s" in monitor.plot_svg()
    text, page = snapshot_views(settings, "tiny")
    assert "language model" in text
    assert "ITL p99 ms" in page
    # and Prometheus has the same series
    headers = {"authorization": f"Bearer {client.token()}"}
    metrics = requests.get(f"{client.url}/metrics", headers=headers, timeout=10).text
    for series in (
        'km_generation_tokens_total{model="tiny",version="1"}',
        'km_generation_running{model="tiny",version="1"}',
        'km_generation_queued{model="tiny",version="1"}',
        'km_generation_kv_cache_reserved_tokens{model="tiny",version="1"}',
        'km_generation_kv_cache_budget_tokens{model="tiny",version="1"} 32768.0',
    ):
        assert series in metrics
