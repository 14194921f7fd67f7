"""``%generate``: text from a served language model, streamed into the cell as it arrives,
then one line of figures (tokens, time to first token, tokens/s)."""

from __future__ import annotations

import argparse
import sys

from IPython.core.magic import line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments

from kernel_magics import api
from kernel_magics.argtypes import non_negative_float, positive_int
from kernel_magics.magics._args import FeatureMagics, View, front_end, word

VIEWS: list[View] = []


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


@magics_class
class GenerativeMagics(FeatureMagics):
    """Language models; settings are the KernelMagics ones."""

    @line_magic
    @magic_arguments()
    @argument("name", type=word, metavar="NAME[@VERSION]", help="a deployed language model")
    @argument("prompt", nargs="+", metavar="PROMPT", help="the text to continue (quote it)")
    @argument("--max-tokens", type=positive_int, default=64, help="default %(default)s")
    @argument(
        "--temperature",
        type=non_negative_float,
        default=1.0,
        help="0 is greedy; default %(default)s",
    )
    @argument("--top-p", type=_fraction, default=1.0, help="nucleus sampling; default 1")
    @argument("--top-k", type=int, default=0, help="0: no top-k; default 0")
    @argument("--seed", type=int, help="the same seed gives the same text")
    @argument("--stop", type=word, action="append", metavar="TEXT", help="stop before TEXT")
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
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            stop=args.stop,
            on_text=_write,
            settings=self.kernel_magics.settings(),
        )
        print(
            f"\n[{result.model}: {result.completion_tokens} tokens ({result.finish_reason}), "
            f"time to first token {result.ttft_s * 1000:.0f} ms, "
            f"{result.tokens_per_s:.0f} tokens/s]"
        )


def _write(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()


MAGICS = GenerativeMagics
