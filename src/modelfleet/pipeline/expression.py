"""The small, safe expression language of pipeline conditions, inputs and outputs.

    language.language == 'en' and not (spam.label == 'spam')
    intent.confidence >= 0.5 or input.channel in ['chat', 'email']
    len(input.text) > 3

Literals (numbers, 'strings', "strings", true/false/null, [lists]), paths into the request
(``input.text``) and earlier steps' outputs (``spam.label``, ``scores[0]``), comparison
(== != < <= > >= in, not in), ``and``/``or``/``not``, ``+ - * /`` and a few pure functions. It is
parsed once at load time into a tree of our own; nothing is ever passed to ``eval``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


class ExpressionError(ValueError):
    """Raised when an expression does not parse, or names a function that does not exist."""


class EvaluationError(ValueError):
    """Raised when a well-formed expression cannot be evaluated on the data it meets."""


class Skipped:
    """Stands for the output of a step that did not run, so expressions can tell it from null."""

    _instance: Skipped | None = None

    def __new__(cls) -> Skipped:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SKIPPED"


SKIPPED = Skipped()


class NeedsSkipped(Exception):
    """Raised while evaluating when a path reaches into a step that was skipped."""

    def __init__(self, step: str) -> None:
        super().__init__(step)
        self.step = step


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "lower": lambda s: str(s).lower(),
    "upper": lambda s: str(s).upper(),
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "exists": lambda v: v is not None,
}


@dataclass(frozen=True)
class Node:
    """One node of a parsed expression."""

    kind: str
    value: Any = None
    children: tuple[Node, ...] = ()


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>\d+\.\d*|\.\d+|\d+)
      | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<op>==|!=|<=|>=|<|>|\+|-|\*|/|\(|\)|\[|\]|,|\.)
      | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    tokens = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ExpressionError(f"unexpected character {text[pos:].lstrip()[:1]!r} at position {pos}")
        kind = match.lastgroup
        assert kind is not None
        value = match.group(kind)
        start = match.start(kind)
        if kind == "name" and value in _KEYWORDS:
            kind = "keyword"
        tokens.append((kind, value, start))
        pos = match.end()
    return tokens


_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


def _unescape(body: str) -> str:
    out = []
    chars = iter(body)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "")
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
        else:
            out.append(ch)
    return "".join(out)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self, offset: int = 0) -> tuple[str, str, int] | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def accept(self, kind: str, value: str | None = None) -> tuple[str, str, int] | None:
        token = self.peek()
        if token is not None and token[0] == kind and (value is None or token[1] == value):
            self.pos += 1
            return token
        return None

    def expect(self, kind: str, value: str) -> None:
        if self.accept(kind, value) is None:
            token = self.peek()
            found = repr(token[1]) if token else "the end"
            raise ExpressionError(f"expected {value!r} but found {found}")

    def parse(self) -> Node:
        if not self.tokens:
            raise ExpressionError("empty expression")
        node = self.parse_or()
        token = self.peek()
        if token is not None:
            raise ExpressionError(f"unexpected {token[1]!r} at position {token[2]}")
        return node

    def parse_or(self) -> Node:
        node = self.parse_and()
        while self.accept("keyword", "or"):
            node = Node("or", children=(node, self.parse_and()))
        return node

    def parse_and(self) -> Node:
        node = self.parse_not()
        while self.accept("keyword", "and"):
            node = Node("and", children=(node, self.parse_not()))
        return node

    def parse_not(self) -> Node:
        if self.accept("keyword", "not"):
            return Node("not", children=(self.parse_not(),))
        return self.parse_comparison()

    def parse_comparison(self) -> Node:
        node = self.parse_sum()
        token = self.peek()
        if token is None:
            return node
        if token[0] == "op" and token[1] in ("==", "!=", "<", "<=", ">", ">="):
            self.pos += 1
            return Node("compare", token[1], (node, self.parse_sum()))
        if token == ("keyword", "in", token[2]):
            self.pos += 1
            return Node("compare", "in", (node, self.parse_sum()))
        following = self.peek(1)
        if token[:2] == ("keyword", "not") and following is not None and following[:2] == ("keyword", "in"):
            self.pos += 2
            return Node("compare", "not in", (node, self.parse_sum()))
        return node

    def parse_sum(self) -> Node:
        node = self.parse_product()
        while True:
            token = self.accept("op", "+") or self.accept("op", "-")
            if token is None:
                return node
            node = Node("arith", token[1], (node, self.parse_product()))

    def parse_product(self) -> Node:
        node = self.parse_unary()
        while True:
            token = self.accept("op", "*") or self.accept("op", "/")
            if token is None:
                return node
            node = Node("arith", token[1], (node, self.parse_unary()))

    def parse_unary(self) -> Node:
        if self.accept("op", "-"):
            return Node("neg", children=(self.parse_unary(),))
        return self.parse_postfix()

    def parse_postfix(self) -> Node:
        node = self.parse_primary()
        while True:
            if self.accept("op", "."):
                name = self.accept("name")
                if name is None:
                    raise ExpressionError("expected a field name after '.'")
                node = Node("field", name[1], (node,))
            elif self.accept("op", "["):
                index = self.parse_or()
                self.expect("op", "]")
                node = Node("index", children=(node, index))
            else:
                return node

    def parse_primary(self) -> Node:
        token = self.peek()
        if token is None:
            raise ExpressionError("expression ends too early")
        kind, value, position = token
        self.pos += 1
        if kind == "number":
            return Node("literal", float(value) if "." in value else int(value))
        if kind == "string":
            return Node("literal", _unescape(value[1:-1]))
        if kind == "keyword" and value in ("true", "false", "null"):
            return Node("literal", {"true": True, "false": False, "null": None}[value])
        if kind == "op" and value == "(":
            node = self.parse_or()
            self.expect("op", ")")
            return node
        if kind == "op" and value == "[":
            items: list[Node] = []
            if not self.accept("op", "]"):
                items.append(self.parse_or())
                while self.accept("op", ","):
                    items.append(self.parse_or())
                self.expect("op", "]")
            return Node("list", children=tuple(items))
        if kind == "name":
            if self.accept("op", "("):
                if value not in FUNCTIONS:
                    raise ExpressionError(
                        f"unknown function {value!r} (known: {', '.join(sorted(FUNCTIONS))})"
                    )
                args: list[Node] = []
                if not self.accept("op", ")"):
                    args.append(self.parse_or())
                    while self.accept("op", ","):
                        args.append(self.parse_or())
                    self.expect("op", ")")
                return Node("call", value, tuple(args))
            return Node("name", value)
        raise ExpressionError(f"unexpected {value!r} at position {position}")


@dataclass(frozen=True)
class Expression:
    """A parsed expression and the root names (step names or ``input``) it reads."""

    source: str
    tree: Node
    names: frozenset[str]

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        """Evaluate against ``scope``; raises NeedsSkipped when it reads a skipped step's output."""
        return _evaluate(self.tree, scope)

    def __str__(self) -> str:
        return self.source


def parse(source: str) -> Expression:
    """Parse ``source``; raises ExpressionError saying what is wrong and where."""
    tree = _Parser(source).parse()
    return Expression(source, tree, frozenset(_names(tree)))


def _names(node: Node) -> set[str]:
    if node.kind == "name":
        return {node.value}
    found: set[str] = set()
    for child in node.children:
        found |= _names(child)
    return found


def truthy(value: Any) -> bool:
    return bool(value)


def _compare(op: str, left: Any, right: Any) -> bool:
    try:
        if op == "==":
            return bool(left == right)
        if op == "!=":
            return bool(left != right)
        if op == "in":
            return left in right if right is not None else False
        if op == "not in":
            return left not in right if right is not None else True
        if left is None or right is None:
            return False
        if op == "<":
            return bool(left < right)
        if op == "<=":
            return bool(left <= right)
        if op == ">":
            return bool(left > right)
        return bool(left >= right)
    except TypeError:
        raise EvaluationError(f"cannot compare {type(left).__name__} {op} {type(right).__name__}") from None


def _evaluate(node: Node, scope: Mapping[str, Any]) -> Any:
    kind = node.kind
    if kind == "literal":
        return node.value
    if kind == "name":
        if node.value not in scope:
            raise EvaluationError(f"unknown name {node.value!r}")
        value = scope[node.value]
        if value is SKIPPED:
            raise NeedsSkipped(node.value)
        return value
    if kind == "field":
        base = _evaluate(node.children[0], scope)
        if base is None:
            return None
        if not isinstance(base, Mapping):
            raise EvaluationError(f"cannot read field {node.value!r} of a {type(base).__name__}")
        if node.value not in base:
            raise EvaluationError(f"no field {node.value!r} (fields: {', '.join(sorted(map(str, base)))})")
        return base[node.value]
    if kind == "index":
        base = _evaluate(node.children[0], scope)
        key = _evaluate(node.children[1], scope)
        if base is None:
            return None
        try:
            return base[key]
        except (KeyError, IndexError, TypeError):
            raise EvaluationError(f"cannot index {type(base).__name__} with {key!r}") from None
    if kind == "and":
        return truthy(_evaluate(node.children[0], scope)) and truthy(_evaluate(node.children[1], scope))
    if kind == "or":
        return truthy(_evaluate(node.children[0], scope)) or truthy(_evaluate(node.children[1], scope))
    if kind == "not":
        return not truthy(_evaluate(node.children[0], scope))
    if kind == "compare":
        return _compare(node.value, _evaluate(node.children[0], scope), _evaluate(node.children[1], scope))
    if kind == "list":
        return [_evaluate(child, scope) for child in node.children]
    if kind == "neg":
        value = _evaluate(node.children[0], scope)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EvaluationError(f"cannot negate a {type(value).__name__}")
        return -value
    if kind == "arith":
        left = _evaluate(node.children[0], scope)
        right = _evaluate(node.children[1], scope)
        try:
            if node.value == "+":
                return left + right
            if node.value == "-":
                return left - right
            if node.value == "*":
                return left * right
            return left / right
        except (TypeError, ZeroDivisionError) as err:
            raise EvaluationError(f"cannot compute {node.value!r}: {err}") from None
    if kind == "call":
        args = [_evaluate(child, scope) for child in node.children]
        try:
            return FUNCTIONS[node.value](*args)
        except (TypeError, ValueError) as err:
            raise EvaluationError(f"{node.value}(): {err}") from None
    raise AssertionError(f"unknown node {kind}")
