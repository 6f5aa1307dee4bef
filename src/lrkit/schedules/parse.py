"""``S.parse``: schedules from text, in the vocabulary of the Python calls.

Grammar (whitespace is free)::

    expr  := factor ("*" factor)*
    factor:= ["-" | "+"] atom
    atom  := NUMBER | STRING | "True" | "False" | "None" | list | call | "(" expr ")"
    list  := "[" [expr ("," expr)* [","]] "]"
    call  := NAME "(" [arg ("," arg)* [","]] ")"
    arg   := [NAME "="] expr

``warmup(cosine(3e-4, total=10000), steps=500)``, ``one_cycle(0.1, total=5000)`` and
``cosine(0.1, 1000) * 0.5`` are schedules; a bare number is ``constant(number)``.
Every failure is a ``SpecError`` naming the position and what was expected.
"""
from __future__ import annotations

import inspect
import numbers
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from lrkit import _checks as C
from lrkit.errors import SpecError
from lrkit.schedules.registry import REGISTRY, ScheduleLike

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<string>'[^'\\\n]*'|"[^"\\\n]*")
  | (?P<punct>[()\[\],=*+-])
    """,
    re.VERBOSE | re.ASCII,  # digits and spaces as Python reads them: not '١٠' or '０'
)
_CONSTANTS = {"True": True, "False": False, "None": None, "true": True, "false": False}
MAX_DEPTH = 50


@dataclass
class _Tok:
    kind: str  # number, name, string, punct, end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Tok]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _error(text, pos, f"unexpected character {text[pos]!r}")
        if m.lastgroup != "ws":
            tokens.append(_Tok(m.lastgroup or "", m.group(), pos))
        pos = m.end()
    tokens.append(_Tok("end", "", len(text)))
    return tokens


def _error(text: str, pos: int, message: str) -> SpecError:
    line, caret = text.replace("\n", " ").replace("\t", " "), pos
    if len(line) > 120:  # keep the caret in view on long inputs (the position stays the text's)
        lo = max(0, pos - 60)
        line, caret = line[lo:lo + 120], pos - lo
    return SpecError(f"{message} at position {pos}\n  {line}\n  {' ' * caret}^")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> _Tok:
        return self.tokens[self.i]

    def fail(self, expected: str, tok: _Tok | None = None) -> SpecError:
        tok = tok or self.tok
        got = "end of text" if tok.kind == "end" else repr(tok.text)
        return _error(self.text, tok.pos, f"expected {expected}, got {got}")

    def take(self, punct: str, expected: str) -> _Tok:
        if self.tok.kind == "punct" and self.tok.text == punct:
            self.i += 1
            return self.tokens[self.i - 1]
        raise self.fail(expected)

    def at(self, punct: str) -> bool:
        return self.tok.kind == "punct" and self.tok.text == punct

    def expr(self) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(self.text, self.tok.pos, f"nested deeper than {MAX_DEPTH} levels")
        start = self.tok
        factors = [self.factor()]
        while self.at("*"):
            self.i += 1
            factors.append(self.factor())
        self.depth -= 1
        if len(factors) == 1:
            return factors[0]
        if all(_is_number(f) for f in factors):
            out = 1
            for f in factors:
                out = out * f
            return out
        for f in factors:
            if not (_is_number(f) or isinstance(f, ScheduleLike)):
                raise _error(self.text, start.pos, "'*' multiplies schedules and numbers only")
        return self.build("product", start, [factors], {}, [])

    def factor(self) -> Any:
        sign = 1
        if self.at("-") or self.at("+"):
            sign = -1 if self.tok.text == "-" else 1
            self.i += 1
            if self.tok.kind != "number":
                raise self.fail("a number after the sign")
        value = self.atom()
        return -value if sign < 0 else value

    def atom(self) -> Any:
        tok = self.tok
        if tok.kind == "number":
            self.i += 1
            try:
                return _number(tok.text)
            except ValueError as exc:
                raise _error(self.text, tok.pos, str(exc)) from None
        if tok.kind == "string":
            self.i += 1
            return tok.text[1:-1]
        if tok.kind == "name":
            self.i += 1
            if self.at("("):
                return self.call(tok)
            if tok.text in _CONSTANTS:
                return _CONSTANTS[tok.text]
            if tok.text in REGISTRY:
                raise self.fail(f"'(' after the schedule name {tok.text!r}")
            raise _error(self.text, tok.pos, f"unknown name {tok.text!r}; expected a schedule "
                         f"({', '.join(sorted(REGISTRY))}), a number, a string or a list")
        if self.at("["):
            self.i += 1
            items = []
            while not self.at("]"):
                items.append(self.expr())
                if not self.at("]"):
                    self.take(",", "',' or ']' in the list")
            self.i += 1
            return items
        if self.at("("):
            self.i += 1
            value = self.expr()
            self.take(")", "')'")
            return value
        raise self.fail("a schedule, a number, a string or a list")

    def call(self, name_tok: _Tok) -> Any:
        name = name_tok.text
        if name not in REGISTRY:
            raise _error(self.text, name_tok.pos,
                         f"unknown schedule {name!r}; known: {', '.join(sorted(REGISTRY))}")
        self.take("(", "'('")
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        where: list[int] = []  # the position of each argument, positional then keyword
        while not self.at(")"):
            key_tok = self.tok
            where.append(key_tok.pos)
            if key_tok.kind == "name" and self.tokens[self.i + 1].text == "=" and \
                    self.tokens[self.i + 1].kind == "punct":
                self.i += 2
                if key_tok.text in kwargs:
                    raise _error(self.text, key_tok.pos, f"argument {key_tok.text!r} given twice")
                kwargs[key_tok.text] = self.expr()
            else:
                if kwargs:
                    raise _error(self.text, key_tok.pos,
                                 "a positional argument cannot follow a keyword argument")
                args.append(self.expr())
            if not self.at(")"):
                self.take(",", f"',' or ')' in the arguments of {name}()")
        self.i += 1
        return self.build(name, name_tok, args, kwargs, where)

    def build(self, name: str, tok: _Tok, args: list[Any], kwargs: dict[str, Any],
              where: list[int]) -> Any:
        names = _parameters(REGISTRY[name])
        self.check_arguments(name, tok, names, args, kwargs, where)
        try:
            return REGISTRY[name](*args, **kwargs)
        except (TypeError, ValueError, ArithmeticError, RecursionError) as exc:
            message = str(exc)
            positions = dict(zip(names, where)) | dict(zip(kwargs, where[len(args):]))
            # point at the argument the message names, else at the call
            named = next((n for n in positions if re.search(rf"\b{n}\b", message)), None)
            raise _error(self.text, positions.get(named, tok.pos), message) from None

    def check_arguments(self, name: str, tok: _Tok, names: list[str], args: list[Any],
                        kwargs: dict[str, Any], where: list[int]) -> None:
        """Refuse a call Python would refuse, in the terms the user wrote it: the schedule's
        name, the arguments counted as given, the position of the offending one."""
        required = _required(REGISTRY[name])
        if len(args) > len(names):
            takes = (f"{len(names)}" if len(required) == len(names) else
                     f"from {len(required)} to {len(names)}")
            raise _error(self.text, where[len(names)],
                         f"{name}() takes {takes} positional argument"
                         f"{'' if len(names) == 1 else 's'} ({', '.join(names)}) but "
                         f"{len(args)} {'was' if len(args) == 1 else 'were'} given")
        for i, key in enumerate(kwargs):
            pos = where[len(args) + i]
            if key not in names:
                raise _error(self.text, pos, f"{name}(): unknown argument {key!r}; it takes "
                             f"{', '.join(names)}")
            if names.index(key) < len(args):
                raise _error(self.text, pos, f"{name}(): argument {key!r} given twice (by "
                             "position and by name)")
        missing = [n for n in required[len(args):] if n not in kwargs]
        if missing:
            raise _error(self.text, tok.pos, f"{name}(): missing argument"
                         f"{'' if len(missing) == 1 else 's'} {', '.join(map(repr, missing))}")


def _parameters(cls: Any) -> list[str]:
    """The argument names a schedule's constructor takes, in order."""
    return [p.name for p in inspect.signature(cls).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def _required(cls: Any) -> list[str]:
    """The argument names a schedule's constructor needs (those without a default)."""
    return [p.name for p in inspect.signature(cls).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.default is p.empty]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: the longest integer literal read (Python's own limit on converting text to int)
MAX_DIGITS = 4300


def _number(text: str) -> int | float:
    """The value of a number token; ValueError if it is malformed or too long."""
    if text.startswith("_") or "__" in text or text.endswith("_"):
        raise ValueError(f"malformed number {text!r}")
    if re.fullmatch(r"[0-9][0-9_]*", text):
        digits = len(text.replace("_", ""))
        if digits > MAX_DIGITS:
            raise ValueError(f"integer of {digits} digits is too long (at most {MAX_DIGITS})")
        return int(text)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"malformed number {text!r}") from None


def parse(text: str) -> Any:
    """Read a schedule from text such as ``warmup(cosine(3e-4, total=10000), steps=500)``.

    ``parse(str(s)) == s`` for every schedule ``s``. Raises ``SpecError`` (a ``ValueError``)
    with the position and what was expected when the text is malformed or an argument is
    invalid.
    """
    if not isinstance(text, str):
        raise SpecError(f"parse(): text must be a string, got {type(text).__name__}")
    parser = _Parser(text)
    value = parser.expr()
    if parser.tok.kind != "end":
        raise parser.fail("end of text (or '*')")
    if _is_number(value):
        return parser.build("constant", parser.tokens[0], [value], {}, [])
    if not isinstance(value, ScheduleLike):
        raise _error(text, 0, f"expected a schedule, got {type(value).__name__} {value!r}")
    return value


def as_schedule(value: ScheduleLike | str | float) -> ScheduleLike:
    """A schedule from a schedule, spec text or a constant number (a Python, numpy or
    0-dim array/tensor real number; not a bool)."""
    if isinstance(value, ScheduleLike):
        return value
    if isinstance(value, str):
        return parse(value)
    number = value.item() if getattr(value, "ndim", None) == 0 and hasattr(value, "item") \
        else value
    if isinstance(number, numbers.Real) and not isinstance(number, (bool, np.bool_)):
        try:
            return REGISTRY["constant"](number)
        except ValueError as exc:
            raise ValueError(f"as_schedule(): value must be a Schedule, spec text or a "
                             f"non-negative finite number, got {C.shown(value)}") from exc
    raise TypeError(f"as_schedule(): value must be a Schedule, spec text or a real number, "
                    f"got {C.shown(value)}")
