"""AST of a parsed rule.

The code generator only ever sees these validated nodes, never the user's text,
which is what keeps generated Python free of anything the user typed verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass

ROOTS = frozenset({"event", "profile", "context", "journey"})


@dataclass(frozen=True, slots=True)
class Node:
    pos: int


@dataclass(frozen=True, slots=True)
class Const(Node):
    value: object  # None, bool, int, float or str


@dataclass(frozen=True, slots=True)
class ListExpr(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Path(Node):
    root: str  # one of ROOTS
    keys: tuple[str | int, ...]

    @property
    def dotted(self) -> str:
        """Canonical spelling used in Rule.references: dots where possible, ["..."] otherwise."""
        parts = [self.root]
        for key in self.keys:
            if isinstance(key, int):
                parts.append(f"[{key}]")
            elif key.isidentifier() and key.isascii() and not key.startswith("_"):
                parts.append(f".{key}")
            else:
                escaped = key.replace("\\", "\\\\").replace('"', '\\"')
                parts.append(f'["{escaped}"]')
        return "".join(parts)


@dataclass(frozen=True, slots=True)
class Unary(Node):
    op: str  # "-" or "not"
    operand: Node


@dataclass(frozen=True, slots=True)
class BinOp(Node):
    op: str  # + - * / %
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class BoolOp(Node):
    op: str  # "and" or "or"
    values: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Compare(Node):
    """A (possibly chained) comparison: `1 < x <= 5` is one Compare, as in Python."""

    operands: tuple[Node, ...]
    ops: tuple[str, ...]  # == != < <= > >= in "not in"


@dataclass(frozen=True, slots=True)
class Call(Node):
    name: str
    args: tuple[Node, ...]
    kwargs: tuple[tuple[str, Node], ...]


def children(node: Node) -> tuple[Node, ...]:
    """Direct sub-expressions, for the iterative walks that must not recurse."""
    if isinstance(node, ListExpr):
        return node.items
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, BinOp):
        return (node.left, node.right)
    if isinstance(node, BoolOp):
        return node.values
    if isinstance(node, Compare):
        return node.operands
    if isinstance(node, Call):
        return node.args + tuple(value for _, value in node.kwargs)
    return ()


def reads_no_data(node: Node) -> bool:
    """Reads no data: no path, no event count."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, Path) or (
            isinstance(current, Call) and current.name == "events_in_last"
        ):
            return False
        stack.extend(children(current))
    return True
