"""``%generate``: text from a served language model, streamed into the cell as it arrives,
then one line of figures (tokens, time to first token, tokens/s). ``%chat``: a conversation
with one (``widgets/chat.py``), a widget where widgets render, else one turn as text."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from kernel_magics import api
from kernel_magics.argtypes import non_negative_float, positive_int
from kernel_magics.magics._args import FeatureMagics, View, front_end, word
from kernel_magics.widgets.chat import figures_line
from kernel_magics.widgets.front_end import widgets_render

VIEWS: list[View] = []


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _sampling_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The sampling options ``%generate`` and ``%chat`` share (``api.generate``'s)."""
    options = (
        argument("--max-tokens", type=positive_int, default=64, help="default %(default)s"),
        argument(
            "--temperature",
            type=non_negative_float,
            default=1.0,
            help="0 is greedy; default %(default)s",
        ),
        argument("--top-p", type=_fraction, default=1.0, help="nucleus sampling; default 1"),
        argument("--top-k", type=int, default=0, help="0: no top-k; default 0"),
        argument("--seed", type=int, help="the same seed gives the same text"),
        argument("--stop", type=word, action="append", metavar="TEXT", help="stop before TEXT"),
    )
    for option in reversed(options):
        func = option(func)
    return func


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "seed": args.seed,
        "stop": args.stop,
    }


@magics_class
class GenerativeMagics(FeatureMagics):
    """Language models; settings are the KernelMagics ones."""

    @line_magic
    @magic_arguments()
    @argument("name", type=word, metavar="NAME[@VERSION]", help="a deployed language model")
    @argument("prompt", nargs="+", metavar="PROMPT", help="the text to continue (quote it)")
    @_sampling_options
    @front_end
    def generate(self, args: argparse.Namespace) -> None:
        """Continue PROMPT with a deployed language model, streaming the text into the cell.

        Ends with one line: tokens generated, time to first token, tokens/s (measured here,
        over HTTP). ``api.generate`` returns the same as a record.

        Examples::

            %generate tiny-lm "The for statement" --max-tokens 40 --seed 1
            %generate tiny-lm@2 "Objects are" --temperature 0 --stop "."
        """
        result = api.generate(
            args.name,
            word(" ".join(args.prompt)),
            **_sampling(args),
            on_text=_write,
            settings=self.kernel_magics.settings(),
        )
        print(f"\n{figures_line(result)}")

    @line_magic
    @magic_arguments()
    @argument("name", type=word, metavar="NAME[@VERSION]", help="a deployed language model")
    @argument("message", nargs="*", metavar="MESSAGE", help="one turn, answered as text")
    @argument("--system", type=word, metavar="TEXT", help="the system message")
    @_sampling_options
    @front_end
    def chat(self, args: argparse.Namespace) -> None:
        """Chat with a deployed language model: a widget (transcript, input box, Send, the
        answer streaming as it arrives, Stop) where widgets render; with MESSAGE, or where
        widgets do not render (papermill, nbconvert, a terminal), one turn answered as text.

        Each turn sends the whole conversation to POST /v1/chat/completions; the server renders
        it with the tokenizer's chat template (or the plain template, docs/generative.md). Stop
        closes the stream: the server frees the sequence's slot at its next step.

        Examples::

            %chat tiny-lm --system "You answer in one sentence." --max-tokens 80
            %chat tiny-lm "What is a list comprehension?" --temperature 0
        """
        from kernel_magics.widgets.chat import ChatSession, ChatWidget

        session = ChatSession(
            args.name,
            system=args.system,
            settings=self.kernel_magics.settings(),
            **_sampling(args),
        )
        message = word(" ".join(args.message)) if args.message else ""
        if not message:
            if not widgets_render():
                raise UsageError(
                    "no widget front end here (papermill, nbconvert, a terminal): "
                    'give the message, %chat NAME "MESSAGE"'
                )
            ChatWidget(session).show()
            return
        print(f"you: {message}\n{args.name}: ", end="")
        turn = session.send(message, on_text=_write)
        print(f"\n{figures_line(turn.result)}")


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


MAGICS = GenerativeMagics
