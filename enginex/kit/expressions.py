"""A small, safe expression language for conditional edges.

It is parsed by hand and evaluated by walking a tree of a few node types; nothing is ever
handed to Python's ``eval``/``exec``/``compile``, and a lookup only ever reads keys of mappings
and indexes of lists (never attributes). Grammar::

    expr       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := operand (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not in") operand)?
    operand    := literal | path | list | "(" expr ")"
    literal    := number | 'string' | "string" | true | false | null
    path       := name ("." (name | integer))*          e.g. approval.decision, rows.0.hours
    list       := "[" (expr ("," expr)*)? "]"

Semantics, chosen so that a condition over incomplete state never crashes a run:

* A path whose key is missing (or that walks into a non-container) evaluates to ``null``.
* ``==``/``!=`` compare values of the same kind; numbers compare numerically, booleans equal
  only booleans (``true == 1`` is false). ``!=`` is exactly ``not ==``.
* ``<``, ``<=``, ``>``, ``>=`` compare two numbers or two strings; any other pair is false.
* ``in`` tests membership in a list, a substring of a string, or a key of a mapping;
  ``not in`` is its negation when the right side is such a container; with anything else on
  the right, both are false.
* ``and``/``or``/``not`` use truthiness (null, false, 0, '', [] and {} are false) and
  always yield a boolean.

Bounds: at most 1000 characters and 32 levels of nesting (parentheses, lists, ``not``).
Errors raise ExpressionError with a message naming the 1-based column, e.g.
``unexpected token ')' at column 14``; ``position`` holds the 0-based offset.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

MAX_LENGTH = 1000
MAX_DEPTH = 32

KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null"})
COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">=", "in", "not in"})


class ExpressionError(ValueError):
    """The text is not a valid expression. ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


# --- tokens -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "num", "str", "name", "op", "end"
    value: Any
    pos: int
    text: str


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_INTEGER = re.compile(r"\d+")
_OPERATORS = ("==", "!=", "<=", ">=", "<", ">", "(", ")", "[", "]", ",", ".")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}


def _at(pos: int) -> str:
    return f"at column {pos + 1}"


def _describe(char: str) -> str:
    if char.isprintable():
        return repr(char)
    return f"U+{ord(char):04X}"


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == quote:
            return "".join(out), i + 1
        if char == "\\":
            if i + 1 >= len(text):
                break
            escaped = text[i + 1]
            if escaped not in _ESCAPES:
                raise ExpressionError(
                    f"unknown escape '\\{escaped}' in string {_at(i)}; use \\\\, \\', \\\", "
                    "\\n, \\t or \\r", i)
            out.append(_ESCAPES[escaped])
            i += 2
            continue
        out.append(char)
        i += 1
    raise ExpressionError(f"unterminated string starting {_at(start)}; close it with {quote}",
                          start)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char in " \t\r\n":
            i += 1
            continue
        after_dot = bool(tokens) and tokens[-1].kind == "op" and tokens[-1].value == "."
        if char in "'\"":
            value, end = _read_string(text, i)
            tokens.append(_Token("str", value, i, text[i:end]))
            i = end
            continue
        number = (_INTEGER if after_dot else _NUMBER).match(text, i)
        if number and (char.isdigit() or char == "-"):
            raw = number.group()
            value: Any = int(raw) if after_dot or "." not in raw else float(raw)
            tokens.append(_Token("num", value, i, raw))
            i = number.end()
            continue
        name = _NAME.match(text, i)
        if name:
            tokens.append(_Token("name", name.group(), i, name.group()))
            i = name.end()
            continue
        for op in _OPERATORS:
            if text.startswith(op, i):
                tokens.append(_Token("op", op, i, op))
                i += len(op)
                break
        else:
            hint = ""
            if char == "=":
                hint = "; use == to compare"
            elif char in "&|!":
                hint = "; use and, or, not"
            raise ExpressionError(f"unexpected character {_describe(char)} {_at(i)}{hint}", i)
    tokens.append(_Token("end", None, len(text), ""))
    return tokens


# --- tree ---------------------------------------------------------------------------------

class _Node:
    __slots__ = ()

    def eval(self, state: Mapping[str, Any]) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class _Literal(_Node):
    value: Any

    def eval(self, state: Mapping[str, Any]) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class _Path(_Node):
    parts: tuple[str | int, ...]

    def eval(self, state: Mapping[str, Any]) -> Any:
        return lookup(state, self.parts)


@dataclass(frozen=True, slots=True)
class _List(_Node):
    items: tuple[_Node, ...]

    def eval(self, state: Mapping[str, Any]) -> Any:
        return [item.eval(state) for item in self.items]


@dataclass(frozen=True, slots=True)
class _Not(_Node):
    operand: _Node

    def eval(self, state: Mapping[str, Any]) -> Any:
        return not truthy(self.operand.eval(state))


@dataclass(frozen=True, slots=True)
class _BoolOp(_Node):
    op: str  # "and" | "or"
    operands: tuple[_Node, ...]

    def eval(self, state: Mapping[str, Any]) -> Any:
        if self.op == "and":
            return all(truthy(o.eval(state)) for o in self.operands)
        return any(truthy(o.eval(state)) for o in self.operands)


@dataclass(frozen=True, slots=True)
class _Compare(_Node):
    op: str
    left: _Node
    right: _Node

    def eval(self, state: Mapping[str, Any]) -> Any:
        return compare(self.op, self.left.eval(state), self.right.eval(state))


# --- semantics ----------------------------------------------------------------------------

def lookup(state: Any, parts: Sequence[str | int]) -> Any:
    """Walk ``parts`` through mappings (by key) and lists (by index); None when missing."""
    current = state
    for part in parts:
        if isinstance(current, Mapping):
            current = current.get(str(part)) if isinstance(part, int) else current.get(part)
        elif isinstance(current, list | tuple) and not isinstance(current, str):
            index = part if isinstance(part, int) else _as_index(part)
            if index is None or index >= len(current):
                return None
            current = current[index]
        else:
            return None
        if current is None:
            return None
    return current


def _as_index(part: str) -> int | None:
    return int(part) if part.isdigit() else None


def truthy(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, int | float | str | list | tuple | dict):
        return bool(value)
    return True


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(left: Any, right: Any) -> bool:
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(_equal(a, b) for a, b in zip(left, right,
                                                                             strict=True))
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(_equal(left[k], right[k]) for k in left)
    if type(left) is not type(right):
        return False
    return bool(left == right)


def _contains(container: Any, item: Any) -> bool | None:
    """Membership, or None when ``container`` cannot contain ``item``."""
    if isinstance(container, str):
        return item in container if isinstance(item, str) else None
    if isinstance(container, list | tuple):
        return any(_equal(item, element) for element in container)
    if isinstance(container, Mapping):
        return item in container if isinstance(item, str) else None
    return None


def compare(op: str, left: Any, right: Any) -> bool:
    """Apply a comparison operator with the rules in the module docstring."""
    if op == "==":
        return _equal(left, right)
    if op == "!=":
        return not _equal(left, right)
    if op in ("in", "not in"):
        found = _contains(right, left)
        if found is None:
            return False
        return found if op == "in" else not found
    comparable = (_is_number(left) and _is_number(right)) or (
        isinstance(left, str) and isinstance(right, str))
    if not comparable:
        return False
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    if op == ">=":
        return bool(left >= right)
    raise ValueError(f"unknown operator {op}")  # unreachable: the parser only builds the above


# --- parser -------------------------------------------------------------------------------

class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0
        self.paths: list[tuple[str | int, ...]] = []

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def _peek(self, offset: int = 1) -> _Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def _is(self, kind: str, value: Any = None) -> bool:
        token = self.token
        return token.kind == kind and (value is None or token.value == value)

    def _advance(self) -> _Token:
        token = self.token
        self.index += 1
        return token

    def _unexpected(self, expected: str = "") -> ExpressionError:
        token = self.token
        suffix = f"; expected {expected}" if expected else ""
        if token.kind == "end":
            return ExpressionError(f"unexpected end of expression {_at(token.pos)}{suffix}",
                                   token.pos)
        return ExpressionError(f"unexpected token {token.text!r} {_at(token.pos)}{suffix}",
                               token.pos)

    def _enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(
                f"expression nests more than {MAX_DEPTH} levels deep {_at(pos)}; simplify it",
                pos)

    def parse(self) -> _Node:
        node = self._or()
        if not self._is("end"):
            previous = self.tokens[self.index - 1] if self.index else None
            if self._is("op", "(") and previous is not None and previous.kind == "name":
                raise ExpressionError(
                    f"unexpected token '(' {_at(self.token.pos)}: function calls are not "
                    "supported", self.token.pos)
            raise self._unexpected("and, or, or the end of the expression")
        return node

    def _or(self) -> _Node:
        operands = [self._and()]
        while self._is("name", "or"):
            self._advance()
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else _BoolOp("or", tuple(operands))

    def _and(self) -> _Node:
        operands = [self._not()]
        while self._is("name", "and"):
            self._advance()
            operands.append(self._not())
        return operands[0] if len(operands) == 1 else _BoolOp("and", tuple(operands))

    def _not(self) -> _Node:
        if self._is("name", "not"):
            token = self._advance()
            self._enter(token.pos)
            node = _Not(self._not())
            self.depth -= 1
            return node
        return self._comparison()

    def _comparison_operator(self) -> str | None:
        token = self.token
        if token.kind == "op" and token.value in COMPARISONS:
            return str(token.value)
        if token.kind == "name" and token.value == "in":
            return "in"
        if token.kind == "name" and token.value == "not" and \
                self._peek().kind == "name" and self._peek().value == "in":
            return "not in"
        return None

    def _comparison(self) -> _Node:
        left = self._operand()
        op = self._comparison_operator()
        if op is None:
            return left
        self._advance()
        if op == "not in":
            self._advance()
        right = self._operand()
        if self._comparison_operator() is not None:
            raise self._unexpected("parentheses around each comparison: chained comparisons "
                                   "are not supported")
        return _Compare(op, left, right)

    def _operand(self) -> _Node:
        token = self.token
        if token.kind in ("num", "str"):
            self._advance()
            return _Literal(token.value)
        if token.kind == "name":
            if token.value == "true":
                self._advance()
                return _Literal(True)
            if token.value == "false":
                self._advance()
                return _Literal(False)
            if token.value == "null":
                self._advance()
                return _Literal(None)
            if token.value in KEYWORDS:
                raise self._unexpected("a value")
            return self._path()
        if token.kind == "op" and token.value == "(":
            self._advance()
            self._enter(token.pos)
            node = self._or()
            if not self._is("op", ")"):
                raise self._unexpected(f"')' to close the '(' {_at(token.pos)}")
            self._advance()
            self.depth -= 1
            return node
        if token.kind == "op" and token.value == "[":
            return self._list()
        raise self._unexpected("a value")

    def _list(self) -> _Node:
        opening = self._advance()
        self._enter(opening.pos)
        items: list[_Node] = []
        if not self._is("op", "]"):
            items.append(self._or())
            while self._is("op", ","):
                self._advance()
                items.append(self._or())
        if not self._is("op", "]"):
            raise self._unexpected(f"',' or ']' to close the '[' {_at(opening.pos)}")
        self._advance()
        self.depth -= 1
        return _List(tuple(items))

    def _path(self) -> _Node:
        parts: list[str | int] = [self._advance().value]
        while self._is("op", "."):
            self._advance()
            token = self.token
            if token.kind == "name" or (token.kind == "num" and isinstance(token.value, int)
                                        and token.value >= 0):
                parts.append(token.value)
                self._advance()
            else:
                raise self._unexpected("a key name after '.'")
        path = tuple(parts)
        self.paths.append(path)
        return _Path(path)


# --- public API ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Expression:
    """A parsed expression; immutable and safe to share between runs."""

    text: str
    _root: _Node
    paths: tuple[tuple[str | int, ...], ...]

    def evaluate(self, state: Mapping[str, Any]) -> Any:
        return self._root.eval(state)

    def referenced_keys(self) -> set[str]:
        """Dotted paths the expression reads, e.g. ``{'approval.decision'}``."""
        return {".".join(str(p) for p in path) for path in self.paths}


def parse(text: str) -> Expression:
    """Parse ``text``; raises ExpressionError (with the column) when it is not valid."""
    if not isinstance(text, str):
        raise ExpressionError("an expression must be a string", 0)
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            f"expression is {len(text)} characters long; the limit is {MAX_LENGTH}", MAX_LENGTH)
    if not text.strip():
        raise ExpressionError("the expression is empty", 0)
    parser = _Parser(text)
    root = parser.parse()
    return Expression(text=text, _root=root, paths=tuple(parser.paths))


def evaluate(text: str, state: Mapping[str, Any]) -> Any:
    """Parse and evaluate in one call (parse once and reuse Expression in hot paths)."""
    return parse(text).evaluate(state)


# --- wording for people ---------------------------------------------------------------------

# An approval's decision, said as what happened ("approved" rather than
# ``approval.decision == 'approve'``).
_DECIDED_AS = {"approve": "approved", "approved": "approved", "reject": "rejected",
               "rejected": "rejected", "deny": "denied", "denied": "denied",
               "accept": "accepted", "accepted": "accepted", "cancel": "cancelled"}
_SAID = {"==": "is", "!=": "is not", "<": "is below", "<=": "is at most", ">": "is above",
         ">=": "is at least"}


def describe(text: str) -> str:
    """The condition in words, for the dashboard's graph: ``approval.decision == 'approve'``
    reads "approved", ``score >= 0.8 and not flagged`` reads "score is at least 0.8 and not
    flagged". An expression that does not parse is returned unchanged (the page shows it as
    written; the package upload already refuses invalid ones)."""
    try:
        root = parse(text)._root
    except ExpressionError:
        return text
    return _say(root, top=True)


def _say_path(parts: tuple[str | int, ...]) -> str:
    return " ".join(str(p).replace("_", " ").replace("-", " ") for p in parts)


def _say_value(node: _Node) -> str:
    if isinstance(node, _Literal):
        value = node.value
        if value is None:
            return "empty"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return f"“{value}”"
        return str(value)
    if isinstance(node, _Path):
        return _say_path(node.parts)
    if isinstance(node, _List):
        return ", ".join(_say_value(item) for item in node.items) or "nothing"
    return f"({_say(node)})"


def _say(node: _Node, *, top: bool = False) -> str:
    if isinstance(node, _BoolOp):
        text = f" {node.op} ".join(_say(o) for o in node.operands)
        return text if top else f"({text})"
    if isinstance(node, _Not):
        return f"not {_say(node.operand)}"
    if isinstance(node, _Compare):
        left, right = node.left, node.right
        if isinstance(right, _Path) and isinstance(left, _Literal) and node.op in ("==", "!="):
            left, right = right, left
        if (node.op == "==" and isinstance(left, _Path) and isinstance(right, _Literal)
                and isinstance(right.value, str) and left.parts
                and str(left.parts[-1]) in ("decision", "status")
                and right.value.lower() in _DECIDED_AS):
            return _DECIDED_AS[right.value.lower()]
        if isinstance(right, _Literal) and isinstance(right.value, bool) and node.op in (
                "==", "!="):
            positive = right.value == (node.op == "==")
            return _say_value(left) if positive else f"not {_say_value(left)}"
        if node.op in ("in", "not in"):
            verb = "is one of" if node.op == "in" else "is none of"
            if isinstance(right, _List):
                return f"{_say_value(left)} {verb} {_say_value(right)}"
            verb = "contains" if node.op == "in" else "does not contain"
            return f"{_say_value(right)} {verb} {_say_value(left)}"
        return f"{_say_value(left)} {_SAID[node.op]} {_say_value(right)}"
    if isinstance(node, _Path):
        return _say_path(node.parts)
    return _say_value(node)
