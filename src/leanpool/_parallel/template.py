"""The command template: GNU parallel's replacement strings, and quoting for the shell.

A job's command is the template's words joined by spaces, run by ``/bin/sh -c``, as
GNU parallel does.  Each replacement string is replaced by its value, quoted for the
shell (so a file named ``a b;echo pwned`` is one argument and nothing else runs); with
``-q`` the values go in as they are and each whole word is quoted instead.  A template
with no replacement string gets the job's arguments appended, each quoted.

Replacement strings: ``{}`` (the arguments, space-separated), ``{.}`` (without its
extension), ``{/}`` (basename), ``{//}`` (dirname), ``{/.}`` (basename without
extension), ``{#}`` (the job's number, from 1), ``{%}`` (its job slot), and ``{N}`` with
the same ``.``, ``/``, ``//``, ``/.`` forms for the N-th input source.
"""

from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["SLOT_VARIABLE", "Template"]

SLOT_VARIABLE: Final = "PARALLEL_JOBSLOT"
"""The environment variable that holds a job's slot, as GNU parallel names it; ``{%}``
becomes a reference to it, since only the runner knows which slot a job gets."""

_TOKEN: Final = re.compile(r"\{(\d*)(\.|/|//|/\.|#|%)?\}")


def _no_extension(value: str) -> str:
    head, slash, tail = value.rpartition("/")
    stem, dot, _ext = tail.rpartition(".")
    return head + slash + (stem if dot and stem else tail)


def _basename(value: str) -> str:
    return value.rpartition("/")[2]


def _dirname(value: str) -> str:
    head, slash, _tail = value.rpartition("/")
    return head if head else ("/" if slash else ".")


_FORMS: Final[dict[str, Callable[[str], str]]] = {
    "": lambda value: value,
    ".": _no_extension,
    "/": _basename,
    "//": _dirname,
    "/.": lambda value: _no_extension(_basename(value)),
}


class Template:
    """The words of a command template, ready to be filled with one job's arguments.

    Raises:
        ValueError: a ``{N}`` names an input source that does not exist.
    """

    def __init__(self, words: Sequence[str], *, sources: int, quote_words: bool) -> None:
        self.words = list(words)
        self.quote_words = quote_words
        self.uses_slot = False
        self.replaces = False
        for word in self.words:
            for match in _TOKEN.finditer(word):
                number, form = match.group(1), match.group(2) or ""
                if form in ("#", "%") and number:
                    continue  # not a replacement string: {1#} is literal text
                self.replaces = True
                self.uses_slot = self.uses_slot or form == "%"
                if number and not 1 <= int(number) <= max(sources, 1):
                    raise ValueError(
                        f"{match.group(0)} names input source {number}, "
                        f"but there {'is' if sources == 1 else 'are'} {sources}"
                    )

    def command(self, args: Sequence[str], seq: int) -> str:
        """The command line of the job with these arguments (one per source)."""

        def value(match: re.Match[str]) -> str:
            number, form = match.group(1), match.group(2) or ""
            if form == "#":
                if number:
                    return match.group(0)
                return str(seq)
            if form == "%":
                if number:
                    return match.group(0)
                return f'"${SLOT_VARIABLE}"' if not self.quote_words else f"${SLOT_VARIABLE}"
            change = _FORMS[form]
            if number:
                text = change(args[int(number) - 1])
                return text if self.quote_words else shlex.quote(text)
            if self.quote_words:
                return " ".join(change(a) for a in args)
            return " ".join(shlex.quote(change(a)) for a in args)

        words = [_TOKEN.sub(value, word) for word in self.words]
        if self.quote_words:
            words = [shlex.quote(word) for word in words]
        if not self.replaces:
            words += [shlex.quote(a) for a in args]
        return " ".join(words)
