"""The ``filter`` option: an OData-style expression compiled to a Django ``Q`` (pure, no I/O).

Parser choice: hand-written recursive descent rather than a parser generator such as lark. The
grammar is four rules; the work is in the errors and the limits, and there hand-written wins:
every error names the offending token and its exact offset in a client's words ("unknown
field 'calle' at position 0", "unexpected end of expression at position 23") instead of a
translation of lark's ``UnexpectedToken``/``UnexpectedCharacters`` expected-terminal sets;
the nesting limit is a counter checked at each ``(`` and ``not`` while parsing (lark's LALR
parser accepts any depth and its ``Transformer`` recurses per level, so it would need a
separate pre-scan); and the lazy tokenizer reports errors in reading order.

Grammar (keywords lower case, whitespace free between tokens)::

    expr       := and_expr ("or" and_expr)*
    and_expr   := unary ("and" unary)*
    unary      := "not" unary | primary
    primary    := "(" expr ")"
                | ("contains" | "startswith" | "endswith") "(" FIELD "," STRING ")"
                | FIELD ("eq" | "ne" | "gt" | "ge" | "lt" | "le") literal
    literal    := STRING | NUMBER | "null"
    STRING     := "'" ([^'] | "''")* "'"
    NUMBER     := "-"? [0-9]+ ("." [0-9]+)?

Typing follows ``cdrs.fields``: each field kind accepts only its literals, enums only ``eq``
and ``ne``, ``null`` only for nullable fields and only with ``eq``/``ne``, the private fields
only with the billing scope. Null semantics are OData's, which Django's negation already
implements: ``answered_at ne '...'`` and ``not (answered_at gt '...')`` include rows where
answered_at is null. The result is built from field lookups only: no SQL text ever.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Final

from django.db.models import Q

from cdrs.fields import COST_MAX_DIGITS, FIELDS_BY_NAME, CdrField, Kind
from cdrs.ids import InvalidId, decode_id
from cdrs.values import parse_integer, parse_rfc3339

MAX_FILTER_LENGTH: Final = 2000
MAX_DEPTH: Final = 32  # nesting of parentheses and `not`

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

_COMPARISONS: Final[dict[str, str | None]] = {
    "eq": None,  # plain field=value
    "ne": None,  # ~Q(field=value)
    "gt": "gt",
    "ge": "gte",
    "lt": "lt",
    "le": "lte",
}
_FUNCTIONS: Final[dict[str, str]] = {
    "contains": "ccontains",
    "startswith": "cstartswith",
    "endswith": "cendswith",
}
_KEYWORDS: Final = frozenset({"and", "or", "not", "null", *_COMPARISONS, *_FUNCTIONS})
_OPERATOR_LIST: Final = "eq, ne, gt, ge, lt, le"

_WHITESPACE: Final = frozenset(" \t\r\n")
_IDENT_RE: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A number candidate runs to the end of its word, so `1.2.3` or `12abc` is one bad number.
_NUMBER_CANDIDATE_RE: Final = re.compile(r"-?[0-9][0-9A-Za-z_.]*")
_NUMBER_RE: Final = re.compile(r"-?([0-9]+)(?:\.([0-9]+))?")
# NUL cannot be stored or sent to PostgreSQL; lone surrogates cannot be encoded as UTF-8.
_BAD_STRING_CHAR_RE: Final = re.compile("[\x00\ud800-\udfff]")


class FilterError(ValueError):
    """An invalid filter; ``position`` is the 0-based character offset of the problem."""

    def __init__(self, detail: str, position: int, show_position: bool = True) -> None:
        self.detail = detail
        self.position = position
        self.show_position = show_position
        super().__init__(f"{detail} at position {position}" if show_position else detail)

    def __reduce__(self) -> tuple[type[FilterError], tuple[str, int, bool]]:
        return (self.__class__, (self.detail, self.position, self.show_position))


class _T(Enum):
    IDENT = "identifier"
    STRING = "string"
    INTEGER = "integer"
    DECIMAL = "decimal"
    LPAREN = "'('"
    RPAREN = "')'"
    COMMA = "','"
    END = "end of expression"


@dataclass(frozen=True, slots=True)
class _Token:
    type: _T
    text: str  # the source text; for STRING the unquoted, unescaped value
    pos: int

    def is_keyword(self, word: str) -> bool:
        return self.type is _T.IDENT and self.text == word


def _show(text: str, limit: int = 40) -> str:
    """A user-supplied value quoted for a message, OData style, and cut to a sane length."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return "'" + text.replace("'", "''") + "'"


def _describe(tok: _Token) -> str:
    """A token as a message names it after "got"."""
    if tok.type is _T.IDENT:
        return _show(tok.text)
    if tok.type is _T.STRING:
        return f"string {_show(tok.text)}"
    if tok.type in (_T.INTEGER, _T.DECIMAL):
        return f"{tok.type.value} {tok.text[:40]}"
    return tok.type.value


def _unexpected_end(tok: _Token) -> FilterError:
    return FilterError("unexpected end of expression", tok.pos)


class _Lexer:
    """Tokens on demand, so a bad character late in the text never hides an earlier error."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._peeked: _Token | None = None

    def peek(self) -> _Token:
        if self._peeked is None:
            self._peeked = self._scan()
        return self._peeked

    def next(self) -> _Token:
        tok = self.peek()
        self._peeked = None
        return tok

    def _scan(self) -> _Token:
        text = self._text
        pos = self._pos
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
        if pos >= len(text):
            self._pos = pos
            return _Token(_T.END, "", len(text))
        char = text[pos]
        if char in "(),":
            self._pos = pos + 1
            kind = {"(": _T.LPAREN, ")": _T.RPAREN, ",": _T.COMMA}[char]
            return _Token(kind, char, pos)
        if char == "'":
            return self._string(pos)
        if "0" <= char <= "9" or char == "-":
            return self._number(pos)
        match = _IDENT_RE.match(text, pos)
        if match is not None:
            self._pos = match.end()
            return _Token(_T.IDENT, match.group(), pos)
        if char.isprintable():
            raise FilterError(f"unexpected character {_show(char)}", pos)
        raise FilterError(f"unexpected character U+{ord(char):04X}", pos)

    def _string(self, start: int) -> _Token:
        text = self._text
        parts: list[str] = []
        pos = start + 1
        while True:
            end = text.find("'", pos)
            if end < 0:
                raise FilterError("unterminated string", start)
            parts.append(text[pos:end])
            if text.startswith("''", end):
                parts.append("'")
                pos = end + 2
                continue
            self._pos = end + 1
            break
        bad = _BAD_STRING_CHAR_RE.search(text, start, end)
        if bad is not None:
            raise FilterError(
                f"string contains an invalid character U+{ord(bad.group()):04X}", bad.start()
            )
        return _Token(_T.STRING, "".join(parts), start)

    def _number(self, start: int) -> _Token:
        match = _NUMBER_CANDIDATE_RE.match(self._text, start)
        if match is None:  # a lone "-"
            raise FilterError(f"unexpected character {_show(self._text[start])}", start)
        candidate = match.group()
        number = _NUMBER_RE.fullmatch(candidate)
        if number is None:
            raise FilterError(f"invalid number {_show(candidate)}", start)
        self._pos = match.end()
        kind = _T.DECIMAL if number.group(2) is not None else _T.INTEGER
        return _Token(kind, candidate, start)


# A parsed literal: str, int, Decimal or None; what a field accepts is decided per kind.
_Value = str | int | Decimal | datetime | None


class _Parser:
    def __init__(self, text: str, *, billing: bool) -> None:
        self._lexer = _Lexer(text)
        self._billing = billing
        self._depth = 0

    def parse(self) -> Q:
        q = self._or()
        tok = self._lexer.peek()
        if tok.type is _T.RPAREN:
            raise FilterError("unbalanced ')'", tok.pos)
        if tok.type is not _T.END:
            raise FilterError(f"expected 'and', 'or' or the end, got {_describe(tok)}", tok.pos)
        return q

    # --- boolean structure -------------------------------------------------------------

    def _or(self) -> Q:
        return self._joined("or", Q.OR, self._and)

    def _and(self) -> Q:
        return self._joined("and", Q.AND, self._unary)

    def _joined(self, keyword: str, connector: str, operand: Callable[[], Q]) -> Q:
        """``operand (keyword operand)*`` as one Q with ``connector``."""
        terms = [operand()]
        while self._lexer.peek().is_keyword(keyword):
            self._lexer.next()
            terms.append(operand())
        return terms[0] if len(terms) == 1 else Q(*terms, _connector=connector)

    def _unary(self) -> Q:
        tok = self._lexer.peek()
        if not tok.is_keyword("not"):
            return self._primary()
        self._lexer.next()
        self._enter(tok)
        q = ~self._unary()
        self._depth -= 1
        return q

    def _enter(self, tok: _Token) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise FilterError(f"filter is nested deeper than {MAX_DEPTH} levels", tok.pos)

    def _primary(self) -> Q:
        tok = self._lexer.next()
        if tok.type is _T.LPAREN:
            self._enter(tok)
            q = self._or()
            close = self._lexer.next()
            if close.type is _T.END:
                raise FilterError("missing ')' for the '(' opened", tok.pos)
            if close.type is not _T.RPAREN:
                raise FilterError(f"expected ')', 'and' or 'or', got {_describe(close)}", close.pos)
            self._depth -= 1
            return q
        if tok.type is _T.IDENT:
            if tok.text in _FUNCTIONS:
                return self._function(tok)
            return self._comparison(self._field(tok))
        if tok.type is _T.END:
            raise _unexpected_end(tok)
        hint = " (the field goes on the left)" if tok.type in _LITERAL_TYPES else ""
        raise FilterError(
            f"expected a field name, 'not', '(' or a function, got {_describe(tok)}{hint}",
            tok.pos,
        )

    # --- comparisons and functions ----------------------------------------------------

    def _field(self, tok: _Token) -> CdrField:
        if tok.type is _T.END:
            raise _unexpected_end(tok)
        if tok.type is not _T.IDENT:
            raise FilterError(f"expected a field name, got {_describe(tok)}", tok.pos)
        if tok.text in _KEYWORDS:
            raise FilterError(f"expected a field name, got keyword {_show(tok.text)}", tok.pos)
        field = FIELDS_BY_NAME.get(tok.text)
        if field is None:
            hint = " (keywords are lower case)" if tok.text.lower() in _KEYWORDS else ""
            raise FilterError(f"unknown field {_show(tok.text)}{hint}", tok.pos)
        if field.private and not self._billing:
            raise FilterError(f"field '{field.name}' requires the billing scope", tok.pos)
        return field

    def _comparison(self, field: CdrField) -> Q:
        op = self._lexer.next()
        if op.type is _T.END:
            raise _unexpected_end(op)
        if op.type is not _T.IDENT or op.text not in _COMPARISONS:
            if op.type is _T.IDENT and op.text.lower() in _COMPARISONS:
                detail = f"unknown operator {_show(op.text)} (operators are lower case)"
            else:
                detail = (
                    f"expected an operator ({_OPERATOR_LIST}) after '{field.name}', "
                    f"got {_describe(op)}"
                )
            raise FilterError(detail, op.pos)
        literal = self._lexer.next()
        if literal.type is _T.END:
            raise _unexpected_end(literal)
        if literal.is_keyword("null"):
            return self._null_comparison(field, op, literal)
        if literal.type not in _LITERAL_TYPES:
            raise FilterError(
                f"expected a value ('text', a number or null) after '{op.text}', "
                f"got {_describe(literal)}",
                literal.pos,
            )
        if field.kind is Kind.ENUM and op.text not in ("eq", "ne"):
            raise FilterError(
                f"enum field '{field.name}' can only be compared with eq or ne", op.pos
            )
        value = _convert(field, literal)
        suffix = _COMPARISONS[op.text]
        if suffix is not None:
            return Q(**{f"{field.name}__{suffix}": value})
        q = Q(**{field.name: value})
        return ~q if op.text == "ne" else q

    def _null_comparison(self, field: CdrField, op: _Token, literal: _Token) -> Q:
        if not field.nullable:
            raise FilterError(f"field '{field.name}' is never null", literal.pos)
        if op.text not in ("eq", "ne"):
            raise FilterError("null can only be compared with eq or ne", op.pos)
        return Q(**{f"{field.name}__isnull": op.text == "eq"})

    def _expect(self, kind: _T, expected: str) -> _Token:
        """The next token, which must be of ``kind``; else "expected ..., got ..."."""
        tok = self._lexer.next()
        if tok.type is not kind:
            if tok.type is _T.END:
                raise _unexpected_end(tok)
            raise FilterError(f"expected {expected}, got {_describe(tok)}", tok.pos)
        return tok

    def _function(self, name: _Token) -> Q:
        call = f"{name.text}()"
        self._expect(_T.LPAREN, f"'(' after '{name.text}'")
        field_tok = self._lexer.next()
        field = self._field(field_tok)
        if field.kind is not Kind.STRING:
            raise FilterError(
                f"{call} needs a string field, '{field.name}' is {_kind_name(field)}",
                field_tok.pos,
            )
        self._expect(_T.COMMA, f"',' after '{field.name}'")
        needle = self._expect(_T.STRING, f"a string as the second argument of {call}")
        self._expect(_T.RPAREN, f"')' to close {call}")
        return Q(**{f"{field.name}__{_FUNCTIONS[name.text]}": needle.text})


_LITERAL_TYPES: Final = frozenset({_T.STRING, _T.INTEGER, _T.DECIMAL})


def _kind_name(field: CdrField) -> str:
    return {Kind.ENUM: "an enum", Kind.INTEGER: "an integer", Kind.ID: "an id"}.get(
        field.kind, f"a {field.kind.value}"
    )


def _mismatch(expected: str, field: CdrField, literal: _Token) -> FilterError:
    return FilterError(
        f"expected {expected} for '{field.name}', got {literal.type.value}", literal.pos
    )


def _convert(field: CdrField, literal: _Token) -> _Value:
    """The Python value a non-null literal stands for when compared with ``field``."""
    kind = field.kind
    if kind is Kind.STRING:
        if literal.type is not _T.STRING:
            raise _mismatch("a string", field, literal)
        return literal.text
    if kind is Kind.ENUM:
        if literal.type is not _T.STRING:
            raise _mismatch("one of its values as a string", field, literal)
        if literal.text not in field.choices:
            allowed = ", ".join(_show(choice) for choice in field.choices)
            raise FilterError(
                f"unknown value {_show(literal.text)} for '{field.name}' (one of: {allowed})",
                literal.pos,
            )
        return literal.text
    if kind is Kind.TIMESTAMP:
        if literal.type is not _T.STRING:
            raise _mismatch("a timestamp", field, literal)
        try:
            return parse_rfc3339(literal.text)
        except (ValueError, OverflowError):
            raise FilterError(
                f"invalid timestamp {_show(literal.text)} for '{field.name}' "
                "(expected RFC 3339 such as '2022-01-01T00:00:00Z')",
                literal.pos,
            ) from None
    if kind is Kind.INTEGER:
        if literal.type is not _T.INTEGER:
            raise _mismatch("an integer", field, literal)
        try:
            value = parse_integer(literal.text)  # bounded before converting
        except ValueError:
            value = None
        if value is None or not _INT64_MIN <= value <= _INT64_MAX:
            raise FilterError(
                f"integer {literal.text[:40]} is out of range for '{field.name}'", literal.pos
            )
        return value
    if kind is Kind.DECIMAL:
        if literal.type not in (_T.INTEGER, _T.DECIMAL):
            raise _mismatch("a number", field, literal)
        return _decimal(field, literal)
    if kind is Kind.ID:
        if literal.type is not _T.STRING:
            raise _mismatch("an id string", field, literal)
        try:
            return decode_id(literal.text)
        except InvalidId:
            raise FilterError(f"invalid id {_show(literal.text)}", literal.pos) from None
    raise AssertionError(f"unhandled field kind {kind}")  # pragma: no cover


def _decimal(field: CdrField, literal: _Token) -> Decimal:
    number = _NUMBER_RE.fullmatch(literal.text)
    assert number is not None  # the lexer only makes INTEGER/DECIMAL tokens that match
    digits = len(number.group(1).lstrip("0")) + len(number.group(2) or "")
    if digits > COST_MAX_DIGITS:
        raise FilterError(
            f"number {literal.text[:40]} for '{field.name}' has more than {COST_MAX_DIGITS} digits",
            literal.pos,
        )
    try:
        value = Decimal(literal.text)
    except InvalidOperation:  # pragma: no cover - the token is always a plain decimal
        raise FilterError(f"invalid number {_show(literal.text)}", literal.pos) from None
    if not value.is_finite():  # pragma: no cover - no NaN/Infinity token exists
        raise FilterError(f"invalid number {_show(literal.text)}", literal.pos)
    return value


def compile_filter(text: str, *, billing: bool) -> Q:
    """The ``Q`` for a filter expression; ``FilterError`` (with a position) if it is invalid.

    ``billing`` says whether the caller may use the private fields (cost, billed_account).
    """
    if not isinstance(text, str):
        raise FilterError("filter must be a string", 0, show_position=False)
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(
            f"filter is longer than {MAX_FILTER_LENGTH} characters",
            MAX_FILTER_LENGTH,
            show_position=False,
        )
    return _Parser(text, billing=billing).parse()
