"""The command template: GNU parallel's replacement strings, and quoting for the shell.

A job's command is the template's words joined by spaces, run by ``/bin/sh -c``, as
GNU parallel does.  Each replacement string is replaced by its value, quoted for the
shell (so a file named ``a b;echo pwned`` is one argument and nothing else runs); with
``-q`` the values go in as they are and each whole word is quoted instead.  A template
with no replacement string gets the job's arguments appended, each quoted.

A *simple* template, one whose words the shell would only split (a program found on
PATH, no quotes, no ``$``, globs, redirections or other shell syntax, no shell
keyword or builtin), is run as an argv instead, with the values as they are: the same
arguments reach the same program, one process per job instead of a shell and its child
(the difference between ``sha256sum {}`` at half and at full ``xargs`` speed).

Replacement strings: ``{}`` (the arguments, space-separated), ``{.}`` (without its
extension), ``{/}`` (basename), ``{//}`` (dirname), ``{/.}`` (basename without
extension), ``{#}`` (the job's number, from 1), ``{%}`` (its job slot), and ``{N}`` with
the same ``.``, ``/``, ``//``, ``/.`` forms for the N-th input source.
"""

from __future__ import annotations

import re
import shlex
import shutil
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["SLOT_VARIABLE", "Template"]

SLOT_VARIABLE: Final = "PARALLEL_JOBSLOT"
"""The environment variable that holds a job's slot, as GNU parallel names it; ``{%}``
becomes a reference to it, since only the runner knows which slot a job gets."""

_TOKEN: Final = re.compile(r"\{(\d*)(\.|/|//|/\.|#|%)?\}")

_PLAIN_WORD: Final = re.compile(r"[\w@%+=:,./-]*", re.ASCII)
"""A word the shell leaves as it is (apart from the replacement strings in it)."""

_SHELL_ONLY: Final = frozenset(
    (  # noqa: SIM905  # one word list, written as prose
        "! . : [[ alias bg break case cd command continue do done elif else esac eval exec "
        "exit export fc fg for function getopts hash if in jobs local read readonly return "
        "select set shift source then time times trap type typeset ulimit umask unalias "
        "unset until wait while "
        # Builtins that are programs too: the shell runs them without a process of their
        # own, which is quicker than starting the program.
        "echo printf test [ true false kill pwd"
    ).split()
)
"""First words that mean something else to a shell than a program of that name, or that
it runs more quickly itself."""


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
        self._sources = sources
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
        self.simple = self._is_simple()

    def _is_simple(self) -> bool:
        """Whether the shell would only split this template into words (see above)."""
        if self.quote_words or self.uses_slot or not self.words:
            return False
        program = self.words[0]
        if _TOKEN.search(program) or "=" in program or program in _SHELL_ONLY:
            return False
        for word in self.words:
            for match in _TOKEN.finditer(word):
                # {} of several sources is several words: only as a word of its own.
                if not match.group(1) and self._sources > 1 and match.group(0) != word:
                    return False
            if not _PLAIN_WORD.fullmatch(_TOKEN.sub("", word)):
                return False
        return shutil.which(program) is not None

    def argv(self, args: Sequence[str], seq: int) -> list[str]:
        """The job's argv, for a ``simple`` template: the values as they are."""

        def value(match: re.Match[str]) -> str:
            number, form = match.group(1), match.group(2) or ""
            if form == "#":
                return match.group(0) if number else str(seq)
            change = _FORMS[form]
            if number:
                return change(args[int(number) - 1])
            return " ".join(change(a) for a in args)

        out: list[str] = []
        for word in self.words:
            match = _TOKEN.fullmatch(word)
            if match and not match.group(1) and (match.group(2) or "") in _FORMS:
                out.extend(_FORMS[match.group(2) or ""](a) for a in args)
            else:
                out.append(_TOKEN.sub(value, word))
        if not self.replaces:
            out.extend(args)
        return out

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
