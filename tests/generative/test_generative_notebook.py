"""A language model from the notebook's side, through the real inference process: ``%chat``
(one static turn, the session's turns and messages, Stop freeing the slot)."""

from __future__ import annotations

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
    plain = "".join(f"{m['role']}: {m['content']}\n" for m in session.messages_for("Hi")[:-1])
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
