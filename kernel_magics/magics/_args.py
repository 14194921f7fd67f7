"""What every magic shares: splitting a line, argparse through ``magic_arguments``, and core
errors shown as IPython's one-line ``UsageError``; plus how results register their views."""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics
from IPython.core.magic_arguments import argument

from kernel_magics import display
from kernel_magics.argtypes import option_hint
from kernel_magics.errors import KernelMagicsError
from kernel_magics.warmup import wait_for_warmup

_OPENING, _CLOSING, _QUOTES = "([{", ")]}", "'\""


@contextlib.contextmanager
def usage_errors() -> Iterator[None]:
    """The one place where core errors become IPython's one-line, traceback-free UsageError."""
    try:
        yield
    except KernelMagicsError as err:
        raise UsageError(display.one_line(err)) from None


def split_args(line: str) -> list[str]:
    """Split a magic's line at spaces outside brackets and quotes.

    ``Net(hidden = 128)`` and ``X[y == 3]`` stay one argument each. Quotes are kept: they belong
    to the Python expression (``"label"`` evaluates to a column name).
    """
    tokens: list[str] = []
    current, depth, quote, escaped = "", 0, "", False
    for ch in line:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in _QUOTES:
            quote = ch
        elif ch in _OPENING:
            depth += 1
        elif ch in _CLOSING:
            depth -= 1
            if depth < 0:
                raise UsageError(f"unbalanced {ch!r} in: {line.strip()}")
        elif ch.isspace() and depth == 0:
            if current:
                tokens.append(current)
            current = ""
            continue
        current += ch
    if quote or depth:
        raise UsageError(f"unclosed {'quote' if quote else 'bracket'} in: {line.strip()}")
    if current:
        tokens.append(current)
    return tokens


def word(text: str) -> str:
    """A plain string option (name, column): one pair of surrounding quotes is optional."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in _QUOTES:
        return text[1:-1]
    return text


def front_end(func: Callable[[Any, argparse.Namespace], Any]) -> Callable[..., Any]:
    """Parse the line with the magic's argparse parser, then run ``func`` under
    ``usage_errors``. ``magic_arguments`` turns the cleaned docstring into the ``%magic?`` help."""

    @functools.wraps(func)
    def magic(self: Any, line: str = "") -> Any:
        parser = magic.parser  # type: ignore[attr-defined]
        parser.allow_abbrev = False  # `--epoch 2` must not pass for `--epochs 2`
        tokens = split_args(line)
        # IPython's parsers have no -h (add_help=False): answer it as `%magic?` would
        if "-h" in tokens or "--help" in tokens:
            display.show(magic.__doc__ or "")
            return None
        wait_for_warmup()  # a magic run outside a cell (a script, a test) waits here too
        try:
            args = parser.parse_args(tokens)
        except UsageError as err:
            hint = option_hint(parser, tokens)
            raise UsageError(f"{err}{hint} (see %{func.__name__}?)") from None
        with usage_errors():
            return func(self, args)

    magic.__doc__ = inspect.cleandoc(func.__doc__ or "")
    return magic


def tidy_help(magics_class: type) -> None:
    """Make the ``%magic?`` help read as plain text: IPython opens it with an RST literal-block
    marker ("::") and the docstrings' "Examples::" blocks are RST too."""
    for names in magics_class.magics.values():  # type: ignore[attr-defined]
        for method_name in names.values():
            func = getattr(magics_class, method_name, None)
            doc = getattr(func, "__doc__", None)
            if func is None or not doc:
                continue
            if doc.startswith("::\n\n"):
                usage, _, rest = doc[4:].partition("\n\n")
                doc = "Usage:\n" + usage + "\n\n" + rest
            func.__doc__ = doc.replace("Examples::", "Examples:").replace("Example::", "Example:")


def arguments(specs: list[tuple[tuple[str, ...], dict[str, Any]]]) -> Callable[..., Any]:
    """``magic_arguments`` decorators for a shared table of argparse arguments."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for flags, options in reversed(specs):
            func = argument(*flags, **options)(func)
        return func

    return decorate


# -- views of the core's results ----------------------------------------------------------------
# (module, class name, text view, HTML view): registered by type *name*, so the module of a
# result is imported only once a result of it exists. Terminals and papermill's text output get
# the short text; notebooks the HTML.
View = tuple[str, str, Callable[[Any], str], Callable[[Any], str]]


def register_views(ipython: Any, views: Sequence[View]) -> None:
    formatters = ipython.display_formatter.formatters
    for module, name, text, html_view in views:
        formatters["text/plain"].for_type_by_name(module, name, _plain_text_printer(text))
        formatters["text/html"].for_type_by_name(module, name, html_view)


def unregister_views(ipython: Any, views: Sequence[View]) -> None:
    for module, name, _, _ in views:
        for mime in ("text/plain", "text/html"):
            ipython.display_formatter.formatters[mime].pop(f"{module}.{name}", None)


def _plain_text_printer(text: Callable[[Any], str]) -> Callable[[Any, Any, bool], None]:
    def printer(result: Any, pretty: Any, cycle: bool) -> None:
        pretty.text(text(result))

    return printer


def unregister_magics(ipython: Any, magics_class: type) -> None:
    """Take one ``@magics_class``'s magics out of the shell (``%unload_ext``)."""
    for kind, names in magics_class.magics.items():  # type: ignore[attr-defined]
        for name in names:
            ipython.magics_manager.magics[kind].pop(name, None)
    ipython.magics_manager.registry.pop(magics_class.__name__, None)


class FeatureMagics(Magics):
    """Base of the magics classes registered beside ``KernelMagics``: they read its settings
    (the ``%config KernelMagics.<option>`` traits) and evaluate expressions through it."""

    @property
    def kernel_magics(self) -> Any:
        assert self.shell is not None
        return self.shell.magics_manager.registry["KernelMagics"]
