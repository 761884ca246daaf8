"""The mutation operators of ``mutation.py``: one small change to one AST node.

A :class:`Mutator` walks a module and offers every place where one of these
applies; given ``apply=N`` it makes the N-th change and leaves the rest:

* comparisons flipped (``==``/``!=``, ``<``/``>=``, ``is``/``is not``, ``in``/``not in``)
  or moved across their boundary (``<``/``<=``, ``>``/``>=``);
* ``and``/``or`` swapped; an ``if``/``while``/conditional expression negated; a
  ``not`` dropped; ``+``/``-`` swapped;
* ``True``/``False`` swapped, a number made one larger (strings are left alone);
* a call statement, an assignment to an attribute or item, an augmented
  assignment, a ``raise``, ``continue`` or ``break`` removed; a ``return`` made
  to return ``None``; an item removed from a short list display;
* a ``with`` block unwrapped (its lock or transaction dropped);
* ``backend.compare_and_swap(id, version, record)`` made unconditional: it
  expects whatever version is stored at that moment.

Only code inside functions is mutated (module and class level code is tables
and settings); docstrings, ``assert`` statements, annotations, ``if
TYPE_CHECKING`` blocks and logging calls are left alone.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field

#: Calls whose removal is not a behaviour change anyone tests for.
QUIET_CALLS = {"log", "logging", "warnings"}

_NEGATED: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
_BOUNDARY: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
}
_SYMBOL = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
}


@dataclass
class _Site:
    line: int
    description: str


@dataclass
class Mutator(ast.NodeTransformer):
    """Walks a module offering mutation sites; applies the one numbered ``apply``.

    Both the counting walk and the applying walk visit nodes in the same
    order, so a site's number names the same mutation in both.
    """

    functions: frozenset[str] | None
    apply: int | None = None
    sites: list[_Site] = field(default_factory=list)
    #: Names of the enclosing functions (module and class level code, which
    #: is tables and settings, is never mutated).
    _stack: list[str] = field(default_factory=list)

    # -- bookkeeping ----------------------------------------------------------------

    def _in_scope(self) -> bool:
        if not self._stack:
            return False
        return self.functions is None or any(name in self.functions for name in self._stack)

    def _offer(
        self, node: ast.AST, description: str, make: Callable[[], ast.AST]
    ) -> ast.AST | None:
        if not self._in_scope():
            return None
        index = len(self.sites)
        self.sites.append(_Site(getattr(node, "lineno", 0), description))
        if index == self.apply:
            return make()
        return None

    # -- what is never mutated ----------------------------------------------------------

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        self._stack.append(node.name)
        # Decorators, defaults and annotations stay as they are; the body is mutated.
        body = node.body
        if body and _is_docstring(body[0]):
            node.body = [body[0], *self._statements(body[1:])]
        else:
            node.body = self._statements(body)
        self._stack.pop()
        return node

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.body = self._statements(node.body)
        return node

    def visit_Module(self, node: ast.Module) -> ast.AST:
        node.body = self._statements(node.body)
        return node

    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        return node  # type narrowing and internal checks

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_If(self, node: ast.If) -> ast.AST:
        if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            return node
        node.test = self.visit(node.test)
        node.body = self._statements(node.body)
        node.orelse = self._statements(node.orelse)
        negated = self._offer(node, "condition negated", lambda: _negate(node.test))
        if negated is not None:
            node.test = negated  # type: ignore[assignment]
        return node

    def visit_While(self, node: ast.While) -> ast.AST:
        node.test = self.visit(node.test)
        node.body = self._statements(node.body)
        node.orelse = self._statements(node.orelse)
        negated = self._offer(node, "loop condition negated", lambda: _negate(node.test))
        if negated is not None:
            node.test = negated  # type: ignore[assignment]
        return node

    # -- statements ---------------------------------------------------------------------

    def _statements(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for statement in body:
            result = self.visit(statement)
            if isinstance(result, list):
                out.extend(result)
            elif result is not None:
                out.append(result)
        return out or [ast.Pass()]

    def _removable(self, node: ast.stmt, what: str) -> ast.AST | list[ast.stmt]:
        removed = self._offer(node, f"{what} removed", ast.Pass)
        return node if removed is None else removed

    def visit_Expr(self, node: ast.Expr) -> ast.AST | list[ast.stmt]:
        node.value = self.visit(node.value)
        if isinstance(node.value, ast.Call) and _root_name(node.value.func) not in QUIET_CALLS:
            return self._removable(node, f"call {_short(node.value.func)}()")
        return node

    def visit_Assign(self, node: ast.Assign) -> ast.AST | list[ast.stmt]:
        node.value = self.visit(node.value)
        if all(isinstance(t, (ast.Attribute, ast.Subscript)) for t in node.targets):
            return self._removable(node, f"assignment to {_short(node.targets[0])}")
        return node

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST | list[ast.stmt]:
        node.value = self.visit(node.value)
        return self._removable(node, f"update of {_short(node.target)}")

    def visit_Raise(self, node: ast.Raise) -> ast.AST | list[ast.stmt]:
        return self._removable(node, "raise")

    def visit_Continue(self, node: ast.Continue) -> ast.AST | list[ast.stmt]:
        return self._removable(node, "continue")

    def visit_Break(self, node: ast.Break) -> ast.AST | list[ast.stmt]:
        return self._removable(node, "break")

    def visit_Return(self, node: ast.Return) -> ast.AST:
        if node.value is not None:
            node.value = self.visit(node.value)
            if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                changed = self._offer(node, "returns None", lambda: ast.Return(ast.Constant(None)))
                if changed is not None:
                    return changed
        return node

    def visit_With(self, node: ast.With) -> ast.AST | list[ast.stmt]:
        for item in node.items:
            item.context_expr = self.visit(item.context_expr)
        node.body = self._statements(node.body)
        if any(item.optional_vars is not None for item in node.items):
            return node
        managers = ", ".join(_short(item.context_expr) for item in node.items)
        unwrapped = self._offer(node, f"'with {managers}' unwrapped", lambda: ast.Pass())
        return node if unwrapped is None else node.body

    # -- expressions ---------------------------------------------------------------------

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        self.generic_visit(node)
        for position, op in enumerate(node.ops):
            for table, kind in ((_NEGATED, "flipped"), (_BOUNDARY, "boundary")):
                other = table.get(type(op))
                if other is None:
                    continue
                text = f"'{_SYMBOL[type(op)]}' -> '{_SYMBOL[other]}' ({kind})"
                changed = self._offer(
                    node, text, lambda p=position, o=other: _with_op(node, p, o())
                )
                if changed is not None:
                    return changed
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        self.generic_visit(node)
        swapped: ast.boolop = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        names = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
        changed = self._offer(
            node, f"'{names[0]}' -> '{names[1]}'", lambda: ast.BoolOp(swapped, node.values)
        )
        return node if changed is None else changed

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            changed = self._offer(node, "'not' dropped", lambda: node.operand)
            if changed is not None:
                return changed
        return node

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        self.generic_visit(node)
        changed = self._offer(node, "conditional expression negated", lambda: _negate(node.test))
        if changed is not None:
            node.test = changed  # type: ignore[assignment]
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        swap = {ast.Add: (ast.Sub, "+", "-"), ast.Sub: (ast.Add, "-", "+")}.get(type(node.op))
        if swap is not None:
            op_class, old, new = swap
            changed = self._offer(
                node, f"'{old}' -> '{new}'", lambda: ast.BinOp(node.left, op_class(), node.right)
            )
            if changed is not None:
                return changed
        return node

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        value = node.value
        if isinstance(value, bool):
            changed = self._offer(node, f"{value} -> {not value}", lambda: ast.Constant(not value))
        elif isinstance(value, (int, float)):
            changed = self._offer(
                node, f"{value!r} -> {value + 1!r}", lambda: ast.Constant(value + 1)
            )
        else:
            return node  # strings and bytes: messages, SQL, formats
        return node if changed is None else changed

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if _root_name(node.func) in QUIET_CALLS:
            return node  # a log call's arguments are its message
        self.generic_visit(node)
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "compare_and_swap"
            and len(node.args) == 3
        ):
            # The version check dropped: expect whatever is stored right now.
            changed = self._offer(node, "compare_and_swap made unconditional", lambda: _blind(node))
            if changed is not None:
                return changed
        return node

    def visit_List(self, node: ast.List) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.ctx, ast.Load) and 0 < len(node.elts) <= 4:
            for position, element in enumerate(node.elts):
                text = f"list item {_short(element)} removed"
                changed = self._offer(
                    node,
                    text,
                    lambda p=position: ast.List(node.elts[:p] + node.elts[p + 1 :], ast.Load()),
                )
                if changed is not None:
                    return changed
        return node


def _is_docstring(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )


def _negate(test: ast.expr) -> ast.expr:
    return ast.UnaryOp(ast.Not(), test)


def _with_op(node: ast.Compare, position: int, op: ast.cmpop) -> ast.Compare:
    ops = list(node.ops)
    ops[position] = op
    return ast.Compare(node.left, ops, node.comparators)


def _blind(call: ast.Call) -> ast.Call:
    """``b.compare_and_swap(id, v, r)`` -> ``b.compare_and_swap(id, <stored version>, r)``."""
    assert isinstance(call.func, ast.Attribute)
    session_id, _, record = call.args
    stored = ast.Call(ast.Attribute(call.func.value, "get", ast.Load()), [session_id], [])
    version = ast.parse("(lambda r: None if r is None else r.version)", mode="eval").body
    return ast.Call(call.func, [session_id, ast.Call(version, [stored], []), record], [])


def _root_name(node: ast.expr) -> str:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


def _short(node: ast.expr) -> str:
    text = ast.unparse(node)
    return text if len(text) <= 40 else text[:37] + "..."
