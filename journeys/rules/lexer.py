"""Tokenizer for the rule language.

Hand-written rather than regex-driven so every error can point at the exact
character an ops person has to fix (an unknown escape, a stray `=`, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from .errors import RuleSyntaxError
from .functions import MAX_INT_BITS

TokenKind = Literal["num", "str", "name", "op", "end", "error"]

# Longest first, so "<=" wins over "<".
_OPERATORS = (
    "==",
    "!=",
    "<=",
    ">=",
    "<",
    ">",
    "+",
    "-",
    "*",
    "/",
    "%",
    "(",
    ")",
    "[",
    "]",
    ",",
    ".",
    "=",
)

_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "/": "/", "n": "\n", "t": "\t", "r": "\r", "0": "\0"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    value: object  # str for names/operators/strings, int | float for numbers
    pos: int  # 0-based offset of the first character

    def describe(self) -> str:
        """How the token is named in error messages."""
        if self.kind == "end":
            return "end of rule"
        if self.kind == "str":
            return "string"
        if self.kind == "num":
            return f"number {self.value!r}"
        return repr(self.value)


def tokenize(text: str) -> Iterator[Token]:
    """Yield the tokens of `text`, ending with an "end" token at len(text).

    Lazy, and a bad character becomes an "error" token (value: the message)
    instead of an exception, so the parser reports whichever problem comes first
    in the text: `lambda: 1` is about `lambda`, even though `:` was peeked at.
    Nothing follows an error token.
    """
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
            continue
        try:
            token, i = _next_token(text, i)
        except RuleSyntaxError as error:
            yield Token("error", error.message, error.position)
            return
        yield token
    yield Token("end", None, n)


def _next_token(text: str, start: int) -> tuple[Token, int]:
    ch = text[start]
    if ch.isascii() and (ch.isalpha() or ch == "_"):
        j = start + 1
        while j < len(text) and text[j].isascii() and (text[j].isalnum() or text[j] == "_"):
            j += 1
        return Token("name", text[start:j], start), j
    if ch.isascii() and ch.isdigit():
        return _number(text, start)
    if ch in "\"'":
        return _string(text, start)
    for op in _OPERATORS:
        if text.startswith(op, start):
            return Token("op", op, start), start + len(op)
    raise RuleSyntaxError(f"unexpected character {ch!r}", start, text)


def _number(text: str, start: int) -> tuple[Token, int]:
    n = len(text)
    j = start
    while j < n and text[j].isascii() and text[j].isdigit():
        j += 1
    is_float = False
    # "1.5" is a float; "1." followed by a name is not something we support.
    if j < n and text[j] == "." and j + 1 < n and text[j + 1].isascii() and text[j + 1].isdigit():
        is_float = True
        j += 1
        while j < n and text[j].isascii() and text[j].isdigit():
            j += 1
    if j < n and text[j] in "eE":
        k = j + 1
        if k < n and text[k] in "+-":
            k += 1
        if k < n and text[k].isascii() and text[k].isdigit():
            is_float = True
            j = k
            while j < n and text[j].isascii() and text[j].isdigit():
                j += 1
    if j < n and text[j].isascii() and (text[j].isalpha() or text[j] == "_"):
        raise RuleSyntaxError("invalid number", start, text)
    literal = text[start:j]
    try:
        value: int | float = float(literal) if is_float else int(literal)
    except ValueError:  # e.g. more digits than Python will convert
        raise RuleSyntaxError("number too long", start, text) from None
    if type(value) is int and value.bit_length() > MAX_INT_BITS:
        raise RuleSyntaxError(f"number too long (at most {MAX_INT_BITS * 3 // 10} digits)", start, text)
    return Token("num", value, start), j


def _string(text: str, start: int) -> tuple[Token, int]:
    quote = text[start]
    n = len(text)
    out: list[str] = []
    j = start + 1
    while j < n:
        ch = text[j]
        if ch == quote:
            return Token("str", "".join(out), start), j + 1
        if ch == "\\":
            if j + 1 >= n:
                break
            esc = text[j + 1]
            if esc in _ESCAPES:
                out.append(_ESCAPES[esc])
                j += 2
                continue
            if esc == "u":
                digits = text[j + 2 : j + 6]
                if len(digits) == 4 and all(c in "0123456789abcdefABCDEF" for c in digits):
                    out.append(chr(int(digits, 16)))
                    j += 6
                    continue
                raise RuleSyntaxError("invalid \\u escape (expected 4 hex digits)", j, text)
            raise RuleSyntaxError(f"invalid escape '\\{esc}' in string", j, text)
        if ch == "\n":
            break
        out.append(ch)
        j += 1
    raise RuleSyntaxError("unterminated string", start, text)
