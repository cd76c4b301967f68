"""AST -> Python source, compiled once per rule.

Generating Python (rather than walking the tree per evaluation) is what makes
rules nearly as fast as hand-written code. Safety comes from the input: only
validated nodes are emitted, literals go through repr(), names are ours, and the
function runs with empty builtins and only the helpers below as globals.

Two variants are generated from the same tree:
- "fast" indexes paths with the C-level `dict.get` (`_dget(x or _E, "k")`): a
  missing or falsy intermediate reads as null, a non-dict intermediate raises;
- "safe" indexes through `get_key`, which reads any non-dict as null.
They agree whenever "fast" does not raise, so a caller runs "fast" and, only
if it raised, re-runs "safe" to get the exact answer or the real error.
"""

from __future__ import annotations

import math
from typing import Any

from . import functions as fn
from .nodes import BinOp, BoolOp, Call, Compare, Const, ListExpr, Node, Path, Unary, children

_EMPTY: dict[Any, Any] = {}  # stand-in for a missing intermediate; never handed out or mutated

ARGUMENTS = ("event", "profile", "context", "journey", "_rt")

BASE_GLOBALS: dict[str, object] = {
    "__builtins__": {},
    "_dget": dict.get,
    "_E": _EMPTY,
    "_get": fn.get_key,
    "_idx": fn.get_index,
    "_mul": fn.multiply,
    "_add": fn.add,
    "_mod": fn.modulo,
    "_type": type,
    "_NUM": frozenset({int, float, bool}),
    **{f"_f_{name}": spec.impl for name, spec in fn.SPECS.items()},
}

_ORDERED = frozenset({"<", "<=", ">", ">="})


def generate(tree: Node, *, fast: bool) -> tuple[str, dict[str, object]]:
    """Return (module source, extra globals) defining two functions over the same expression.

    `_rule(event, profile, context, journey, _rt)` returns the raw value.
    `_evaluate(_rt)` is the engine's hot path, inlined to save a call per event:
    it reads only the roots the rule uses and returns `_TRUE`/`_FALSE`, handing
    any exception to `_recover(_rt, exc)`. The caller supplies those three names
    and `_Exception` in the globals.
    """
    emitter = _Emitter(fast=fast)
    body = emitter.emit(tree)
    roots = sorted(_roots(tree))
    loads = "".join(f"    {root} = _rt.{root}\n" for root in roots)
    source = (
        f"def _rule({', '.join(ARGUMENTS)}):\n"
        f"    return {body}\n"
        f"\n"
        f"def _evaluate(_rt):\n"
        f"{loads}"
        f"    try:\n"
        f"        return _TRUE if {body} else _FALSE\n"
        f"    except _Exception as exc:\n"
        f"        return _recover(_rt, exc)\n"
    )
    return source, emitter.constants


def _roots(tree: Node) -> set[str]:
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Path):
            found.add(node.root)
        stack.extend(children(node))
    return found


def has_multi_step_path(tree: Node) -> bool:
    """Whether "fast" and "safe" can differ at all (only paths past the first key differ)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Path) and len(node.keys) > 1:
            return True
        stack.extend(children(node))
    return False


def _is_trivial(node: Node) -> bool:
    """Cheap and side-effect free to evaluate twice: no temporary needed."""
    return isinstance(node, Const) or (isinstance(node, Path) and not node.keys)


def _is_null(node: Node) -> bool:
    return isinstance(node, Const) and node.value is None


def _may_be_null(node: Node) -> bool:
    """Whether a None guard is needed (and legal: `[] is None` is a SyntaxWarning)."""
    return not isinstance(node, (Const, ListExpr))


# A comparison is rendered from parts: literal source text, or the index of an operand.
_Part = str | int


class _Emitter:
    def __init__(self, *, fast: bool) -> None:
        self.fast = fast
        self.temp_count = 0
        self.constants: dict[str, object] = {}

    def temp(self) -> str:
        self.temp_count += 1
        return f"_t{self.temp_count - 1}"

    def constant(self, value: object) -> str:
        name = f"_c{len(self.constants)}"
        self.constants[name] = value
        return name

    def emit(self, node: Node) -> str:
        if isinstance(node, Const):
            return self.const(node.value)
        if isinstance(node, Path):
            return self.path(node)
        if isinstance(node, Compare):
            return self.compare(node)
        if isinstance(node, BoolOp):
            return "(" + f" {node.op} ".join(self.emit(value) for value in node.values) + ")"
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, BinOp):
            return self.binop(node)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, ListExpr):
            return "[" + ", ".join(self.emit(item) for item in node.items) + "]"
        raise TypeError(f"unknown node {node!r}")  # pragma: no cover - parser only makes the above

    def const(self, value: object) -> str:
        if isinstance(value, float) and not math.isfinite(value):
            return self.constant(value)  # repr(inf) is not valid Python source
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return f"({value!r})"  # parenthesised so "-5" stays one operand
        return repr(value)  # None, True, False, str: always a valid literal

    def path(self, node: Path) -> str:
        code = node.root
        for step, key in enumerate(node.keys):
            if isinstance(key, int):
                code = f"_idx({code}, {key!r})"
            elif not self.fast:
                code = f"_get({code}, {key!r})"
            elif step == 0:
                code = f"_dget({code}, {key!r})"  # roots are always dicts (RuleContext)
            else:
                code = f"_dget({code} or _E, {key!r})"
        return code

    def unary(self, node: Unary) -> str:
        operand = self.emit(node.operand)
        if node.op == "not":
            return f"(not {operand})"
        if _is_null(node.operand):
            return "None"
        tmp = self.temp()
        return f"(None if ({tmp} := {operand}) is None else -{tmp})"

    def binop(self, node: BinOp) -> str:
        """Arithmetic where a missing operand makes the result missing, as in SQL."""
        if node.op in ("*", "%", "+"):
            return self.numeric_binop(node)
        if _is_null(node.left) or _is_null(node.right):
            return "None"
        guards: list[str] = []
        operands: list[str] = []
        for side in (node.left, node.right):
            if isinstance(side, Const):
                operands.append(self.emit(side))
            else:
                tmp = self.temp()
                guards.append(f"({tmp} := {self.emit(side)}) is None")
                operands.append(tmp)
        result = f"{operands[0]} {node.op} {operands[1]}"
        if not guards:
            return f"({result})"
        return f"(None if {' or '.join(guards)} else {result})"

    def numeric_binop(self, node: BinOp) -> str:
        """`%` on plain numbers and `+` on plain floats inline; anything else goes to the checking
        helper (`*` always: products of whole numbers grow without bound, `+` on text and lists too)."""
        helper = {"*": "_mul", "%": "_mod", "+": "_add"}[node.op]
        if node.op == "+" and (_is_null(node.left) or _is_null(node.right)):
            return "None"
        if node.op == "*":
            return f"_mul({self.emit(node.left)}, {self.emit(node.right)})"
        checks: list[str] = []
        operands: list[str] = []
        for side in (node.left, node.right):
            if isinstance(side, Const) and type(side.value) in (int, float):
                operands.append(self.emit(side))
            else:
                tmp = self.temp()
                checks.append(f"(_type({tmp} := {self.emit(side)}) in _NUM)")
                operands.append(tmp)
        left, right = operands
        if not checks:
            return f"({left} {node.op} {right})"
        # `&`, not `and`: both temporaries must be assigned before the helper may need them.
        return f"({left} {node.op} {right} if {' & '.join(checks)} else {helper}({left}, {right}))"

    def call(self, node: Call) -> str:
        spec = fn.SPECS[node.name]
        if node.name == "now":
            return "_rt.now"
        if node.name == "exists":
            arg = node.args[0]
            if not _may_be_null(arg):
                return repr(not _is_null(arg))
            if isinstance(arg, Path):  # inline; other code might constant-fold into `1 is ...`
                return f"({self.emit(arg)} is not None)"
        args = [self.emit(arg) for arg in node.args]
        args += [f"{keyword}={self.emit(value)}" for keyword, value in node.kwargs]
        if spec.needs_context:
            args.insert(0, "_rt")
        return f"_f_{node.name}({', '.join(args)})"

    # --- comparisons ---

    def compare(self, node: Compare) -> str:
        """Chained comparisons with null rules; every operand is evaluated at most once."""
        operands = node.operands
        last = len(operands) - 1
        pairs: list[list[_Part]] = []
        for i, op in enumerate(node.ops):
            # A constant list is only turned into a frozenset when no other pair shares it.
            pair = self.pair(op, i, operands[i], operands[i + 1], rhs_private=i + 1 == last)
            if pair is None:
                return "False"  # a conjunct that can never hold
            pairs.append(pair)
        uses = [0] * len(operands)
        for pair in pairs:
            for part in pair:
                if isinstance(part, int):
                    uses[part] += 1
        temps = {
            i: self.temp()
            for i, operand in enumerate(operands)
            if uses[i] > 1 and not _is_trivial(operand)
        }
        code = {i: self.emit(operand) for i, operand in enumerate(operands) if uses[i]}
        # Textual order is execution order here (only `and` chains), so the first
        # occurrence assigns the temporary and later ones reuse it.
        introduced: set[int] = set()
        rendered: list[str] = []
        for pair in pairs:
            out: list[str] = []
            for part in pair:
                if isinstance(part, str):
                    out.append(part)
                elif part not in temps:
                    out.append(code[part])
                elif part in introduced:
                    out.append(temps[part])
                else:
                    introduced.add(part)
                    out.append(f"({temps[part]} := {code[part]})")
            rendered.append("".join(out))
        return rendered[0] if len(rendered) == 1 else "(" + " and ".join(rendered) + ")"

    def pair(
        self, op: str, li: int, left: Node, right: Node, *, rhs_private: bool
    ) -> list[_Part] | None:
        """Parts for one `left op right`; None means constant false."""
        ri = li + 1
        if op in ("==", "!="):
            return ["(", li, f" {op} ", ri, ")"]
        if op in _ORDERED:
            # Ordering against a missing value is simply false, not an error.
            if _is_null(left) or _is_null(right):
                return None
            parts: list[_Part] = ["("]
            for index, side in ((li, left), (ri, right)):
                if _may_be_null(side):
                    parts += [index, " is not None and "]
            return [*parts, li, f" {op} ", ri, ")"]
        negate = op == "not in"
        if _is_null(right):
            return ["True"] if negate else None
        if isinstance(right, ListExpr) and all(isinstance(item, Const) for item in right.items):
            # `x in [..]` of literals: one hash lookup; null is only found if listed.
            # (Should a chain go on, the next pair evaluates the list itself.)
            values = [item.value for item in right.items]  # type: ignore[attr-defined]
            name = self.constant(frozenset(values))
            return ["(", li, f" {op} {name})"]
        # General case: a missing needle or a missing collection is "not found".
        if _is_null(left):
            return ["True"] if negate else None
        if not negate:
            # A missing side makes this pair, and so the whole chain, false before
            # any later pair could read an unassigned temporary.
            parts = ["("]
            for index, side in ((li, left), (ri, right)):
                if _may_be_null(side):
                    parts += [index, " is not None and "]
            return [*parts, li, " in ", ri, ")"]
        # Negated, a missing side makes this pair true and the chain goes on, so a
        # right operand shared with the next pair is evaluated first, unconditionally.
        shared = not rhs_private and not isinstance(right, Const)
        guards: list[_Part] = [ri, " is None or "] if shared else []
        if _may_be_null(left):
            guards += [li, " is None or "]
        if not shared and _may_be_null(right):
            guards += [ri, " is None or "]
        return ["(", *guards, li, " not in ", ri, ")"]
