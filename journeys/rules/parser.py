"""Recursive-descent parser: rule text -> validated AST.

All the safety decisions are made here, at compile time: only the four roots
can be read, only whitelisted functions called, keyword arguments only where a
function declares them, and text size / nesting are bounded so neither this
parser nor Python's compiler can be pushed into a RecursionError.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import RuleSyntaxError
from .functions import MAX_EVENT_QUERIES, MAX_ROUND_DIGITS, SPECS
from .lexer import Token, tokenize
from .nodes import (
    ROOTS,
    BinOp,
    BoolOp,
    Call,
    Compare,
    Const,
    ListExpr,
    Node,
    Path,
    Unary,
    children,
)

MAX_LENGTH = 4000
MAX_DEPTH = 50

_KEYWORDS = frozenset({"and", "or", "not", "in"})
_LITERALS: dict[str, object] = {
    "true": True,
    "True": True,
    "false": False,
    "False": False,
    "null": None,
    "None": None,
}
_COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">="})


@dataclass(frozen=True, slots=True)
class ParsedRule:
    tree: Node
    references: frozenset[str]
    functions: frozenset[str]


def parse(text: str) -> ParsedRule:
    """Parse and validate `text`; raises RuleSyntaxError pointing at the problem."""
    if not isinstance(text, str):
        raise TypeError(f"a rule must be text, not {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise RuleSyntaxError(f"rule is longer than {MAX_LENGTH} characters", MAX_LENGTH, text)
    parser = _Parser(text)
    tree = parser.parse()
    _check_depth(tree, text)
    return ParsedRule(tree, frozenset(parser.references), frozenset(parser.functions))


def _const_int(node: Node) -> int | None:
    """The whole number a literal (or a negated literal) spells, else None."""
    if isinstance(node, Unary) and node.op == "-":
        inner = _const_int(node.operand)
        return None if inner is None else -inner
    if isinstance(node, Const) and type(node.value) is int:
        return node.value
    return None


def _check_depth(tree: Node, text: str) -> None:
    """Bound the depth of the tree, iteratively (long `a + b + c ...` chains nest deeply).

    The generated Python nests roughly as deep as the tree, and CPython refuses
    source with more than 200 nested parentheses.
    """
    stack: list[tuple[Node, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Path):
            depth += len(node.keys)
        if depth > MAX_DEPTH:
            raise RuleSyntaxError(
                f"rule is nested too deeply (more than {MAX_DEPTH} levels)", node.pos, text
            )
        stack.extend((child, depth + 1) for child in children(node))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pending = tokenize(text)
        self.tokens: list[Token] = []
        self.index = 0
        self.nesting = 0
        self.references: set[str] = set()
        self.functions: set[str] = set()

    # --- token helpers ---

    def peek(self, ahead: int = 0) -> Token:
        wanted = self.index + ahead
        while len(self.tokens) <= wanted and (
            not self.tokens or self.tokens[-1].kind not in ("end", "error")
        ):
            self.tokens.append(next(self.pending))
        return self.tokens[min(wanted, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.peek()
        if token.kind == "error":
            raise self.error(str(token.value), token.pos)
        if token.kind != "end":
            self.index += 1
        return token

    def at_op(self, value: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "op" and token.value == value

    def at_keyword(self, value: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "name" and token.value == value

    def error(self, message: str, pos: int) -> RuleSyntaxError:
        return RuleSyntaxError(message, pos, self.text)

    def unexpected(self, token: Token) -> RuleSyntaxError:
        if token.kind == "error":
            return self.error(str(token.value), token.pos)
        if token.kind == "op" and token.value == "=":
            return self.error("unexpected '=' (use == to compare)", token.pos)
        return self.error(f"unexpected {token.describe()}", token.pos)

    def expect_op(self, value: str) -> Token:
        token = self.peek()
        if token.kind == "op" and token.value == value:
            return self.advance()
        if token.kind == "error":
            raise self.unexpected(token)
        raise self.error(f"expected '{value}' but found {token.describe()}", token.pos)

    def enter(self, pos: int) -> None:
        """Guard our own recursion before Python's recursion limit would."""
        self.nesting += 1
        if self.nesting > MAX_DEPTH:
            raise self.error(f"rule is nested too deeply (more than {MAX_DEPTH} levels)", pos)

    def leave(self) -> None:
        self.nesting -= 1

    # --- grammar, lowest precedence first (as in Python) ---

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.error("rule is empty", 0)
        node = self.expression()
        token = self.peek()
        if token.kind != "end":
            raise self.unexpected(token)
        return node

    def expression(self) -> Node:
        return self.or_expr()

    def or_expr(self) -> Node:
        first = self.and_expr()
        values = [first]
        while self.at_keyword("or"):
            self.advance()
            values.append(self.and_expr())
        return first if len(values) == 1 else BoolOp(first.pos, "or", tuple(values))

    def and_expr(self) -> Node:
        first = self.not_expr()
        values = [first]
        while self.at_keyword("and"):
            self.advance()
            values.append(self.not_expr())
        return first if len(values) == 1 else BoolOp(first.pos, "and", tuple(values))

    def not_expr(self) -> Node:
        if self.at_keyword("not"):
            token = self.advance()
            self.enter(token.pos)
            operand = self.not_expr()
            self.leave()
            return Unary(token.pos, "not", operand)
        return self.comparison()

    def comparison(self) -> Node:
        first = self.sum_expr()
        operands = [first]
        ops: list[str] = []
        while True:
            token = self.peek()
            if token.kind == "op" and token.value in _COMPARISONS:
                ops.append(str(token.value))
                self.advance()
            elif self.at_keyword("in"):
                ops.append("in")
                self.advance()
            elif self.at_keyword("not") and self.at_keyword("in", 1):
                ops.append("not in")
                self.advance()
                self.advance()
            else:
                break
            operands.append(self.sum_expr())
        return first if not ops else Compare(first.pos, tuple(operands), tuple(ops))

    def sum_expr(self) -> Node:
        node = self.product()
        while self.at_op("+") or self.at_op("-"):
            token = self.advance()
            node = BinOp(token.pos, str(token.value), node, self.product())
        return node

    def product(self) -> Node:
        node = self.unary()
        while self.at_op("*") or self.at_op("/") or self.at_op("%"):
            token = self.advance()
            node = BinOp(token.pos, str(token.value), node, self.unary())
        return node

    def unary(self) -> Node:
        if self.at_op("-"):
            token = self.advance()
            self.enter(token.pos)
            operand = self.unary()
            self.leave()
            if isinstance(operand, Const) and type(operand.value) in (int, float):
                return Const(token.pos, -operand.value)  # type: ignore[operator]
            return Unary(token.pos, "-", operand)
        return self.primary()

    def primary(self) -> Node:
        token = self.advance()
        if token.kind in ("num", "str"):
            return Const(token.pos, token.value)
        if token.kind == "op" and token.value == "(":
            self.enter(token.pos)
            node = self.expression()
            self.expect_op(")")
            self.leave()
            return node
        if token.kind == "op" and token.value == "[":
            return self.list_literal(token)
        if token.kind == "name":
            return self.name(token)
        if token.kind == "end":
            raise self.error("unexpected end of rule", token.pos)
        raise self.unexpected(token)

    def list_literal(self, opening: Token) -> Node:
        self.enter(opening.pos)
        items: list[Node] = []
        while not self.at_op("]"):
            items.append(self.expression())
            if not self.at_op(","):
                break
            self.advance()
        self.expect_op("]")
        self.leave()
        return ListExpr(opening.pos, tuple(items))

    def name(self, token: Token) -> Node:
        name = str(token.value)
        if name in _LITERALS:
            return Const(token.pos, _LITERALS[name])
        if name in _KEYWORDS:
            raise self.unexpected(token)
        if name.startswith("_"):
            raise self.error(f"names starting with '_' are not allowed ('{name}')", token.pos)
        if self.at_op("("):
            return self.call(token)
        if name in ROOTS:
            return self.path(token)
        if name in SPECS:
            raise self.error(f"'{name}' is a function; call it as {name}(...)", token.pos)
        raise self.error(
            f"unknown name '{name}' (a rule can read event, profile, context and journey)",
            token.pos,
        )

    def path(self, root: Token) -> Path:
        keys: list[str | int] = []
        while True:
            if self.at_op("."):
                self.advance()
                token = self.advance()
                if token.kind != "name":
                    raise self.error(
                        f"expected an attribute name after '.' but found {token.describe()}",
                        token.pos,
                    )
                if str(token.value).startswith("_"):
                    raise self.error(
                        f"names starting with '_' are not allowed ('{token.value}')", token.pos
                    )
                keys.append(str(token.value))
            elif self.at_op("["):
                self.advance()
                keys.append(self.subscript())
                self.expect_op("]")
            else:
                break
        node = Path(root.pos, str(root.value), tuple(keys))
        self.references.add(node.dotted)
        return node

    def subscript(self) -> str | int:
        token = self.advance()
        if token.kind == "str":
            return str(token.value)
        if token.kind == "num" and type(token.value) is int:
            return token.value
        if token.kind == "op" and token.value == "-":
            number = self.advance()
            if number.kind == "num" and type(number.value) is int:
                return -number.value
            token = number
        raise self.error("a subscript must be a text or whole-number literal", token.pos)

    def call(self, name_token: Token) -> Call:
        name = str(name_token.value)
        if name in ROOTS:
            raise self.error(f"'{name}' is not a function", name_token.pos)
        spec = SPECS.get(name)
        if spec is None:
            raise self.error(f"unknown function '{name}'", name_token.pos)
        opening = self.advance()
        self.enter(opening.pos)
        args: list[Node] = []
        kwargs: list[tuple[str, Node]] = []
        while not self.at_op(")"):
            token = self.peek()
            if token.kind == "name" and self.at_op("=", 1):
                keyword = str(token.value)
                if keyword not in spec.kwargs:
                    raise self.error(f"{name}() has no argument called '{keyword}'", token.pos)
                if any(keyword == existing for existing, _ in kwargs):
                    raise self.error(f"{name}() got '{keyword}' twice", token.pos)
                self.advance()
                self.advance()
                kwargs.append((keyword, self.expression()))
            else:
                if kwargs and token.kind != "error":
                    raise self.error("positional argument after a keyword argument", token.pos)
                args.append(self.expression())
            if not self.at_op(","):
                break
            self.advance()
        self.expect_op(")")
        self.leave()
        self.check_arity(name_token, len(args), len(kwargs))
        self.check_cost(name_token, args)
        self.functions.add(name)
        return Call(name_token.pos, name, tuple(args), tuple(kwargs))

    def check_cost(self, name_token: Token, args: list[Node]) -> None:
        """What a rule's text already shows to be too costly (the functions check values again)."""
        name = str(name_token.value)
        if name == "events_in_last":
            self.event_queries = getattr(self, "event_queries", 0) + 1
            if self.event_queries > MAX_EVENT_QUERIES:
                raise self.error(f"at most {MAX_EVENT_QUERIES} events_in_last() calls in one rule (each one "
                                 f"is a database query)", name_token.pos)
        if name == "round" and len(args) == 2 and (digits := _const_int(args[1])) is not None \
                and not -MAX_ROUND_DIGITS <= digits <= MAX_ROUND_DIGITS:
            raise self.error(f"round() digits must be between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}",
                             args[1].pos)

    def check_arity(self, name_token: Token, n_args: int, n_kwargs: int) -> None:
        spec = SPECS[str(name_token.value)]
        name = spec.name
        if n_args < spec.min_args:
            raise self.error(
                f"{name}() needs at least {spec.min_args} argument"
                f"{'s' if spec.min_args != 1 else ''}",
                name_token.pos,
            )
        if spec.max_args is not None and n_args > spec.max_args:
            raise self.error(
                f"{name}() takes at most {spec.max_args} argument"
                f"{'s' if spec.max_args != 1 else ''}",
                name_token.pos,
            )
        if spec.exactly_one_kwarg and n_kwargs != 1:
            choices = " or ".join(f"{keyword}=N" for keyword in spec.kwargs)
            raise self.error(f"{name}() needs exactly one of {choices}", name_token.pos)
