"""The one exception type that the CLI turns into a one-line message and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input from the user: the message says what to fix. Never shown with a traceback."""


def closest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest known name, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_text(text: str, what: str) -> str:
    """`text` if it can be written as UTF-8, else a UserError naming `what`.

    Python holds what is not text as lone surrogates: bytes that are not UTF-8 on a command line or stdin
    (decoded with surrogateescape), or a JSON escape of half a surrogate pair ("\\ud800"). No tokenizer can
    encode them, so they are refused where they come in, with the place they came from.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UserError(f"{what} is not valid text: character {e.start} is {ascii(text[e.start])[1:-1]}, a byte "
                        f"that is not UTF-8 or half a surrogate pair: give UTF-8 text") from None
    return text


def plural(n: int, word: str) -> str:
    """'1 document', '3 documents' (with thousands separators): output never says '1 documents'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"
