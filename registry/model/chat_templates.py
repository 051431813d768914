"""A cheap look at a model's chat template before it is accepted: is it obviously unbounded?

A chat template is Jinja code run on every chat request.  The model server bounds its time and
memory whatever it is (``bentos/llm/chat_template.py``); this refuses at push what can be told
from the source alone: loops over ranges whose sizes multiply past ``MAX_ITERATIONS``, and
repetition or powers with a literal past ``MAX_LITERAL`` (``'x' * 1500000000``).  It parses the
template with Jinja's own parser and never renders it.
"""

from __future__ import annotations

import jinja2
from jinja2 import nodes

MAX_ITERATIONS = 1_000_000
MAX_LITERAL = 1_000_000


def unbounded_reason(source: str) -> str | None:
    """Why ``source`` is refused, or None (which is no promise that it is bounded)."""
    try:
        tree = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"]).parse(source)
    except jinja2.TemplateSyntaxError:
        return None  # tags of transformers' own ({% generation %}): the server's bounds still hold
    return _walk(tree, 1)


def _walk(node: nodes.Node, iterations: int) -> str | None:
    if isinstance(node, (nodes.Mul, nodes.Pow)):
        for side in (node.left, node.right):
            if isinstance(side, nodes.Const) and _number(side.value) > MAX_LITERAL:
                return f"repeats or raises by {side.value}, more than {MAX_LITERAL:,}"
    inner = iterations
    if isinstance(node, nodes.For):
        inner = iterations * _range_size(node.iter)
        if inner > MAX_ITERATIONS:
            return f"runs nested loops of {inner:,} iterations, more than {MAX_ITERATIONS:,}"
    for child in node.iter_child_nodes():
        if (why := _walk(child, inner)) is not None:
            return why
    return None


def _range_size(node: nodes.Node) -> int:
    """The size of ``range(<literals>)``; 1 for anything else (not knowable here)."""
    if not (isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "range"):
        return 1
    args = [arg.value for arg in node.args if isinstance(arg, nodes.Const)]
    if len(args) != len(node.args) or not args or not all(isinstance(a, int) for a in args):
        return 1
    try:
        return max(len(range(*args)), 1)
    except (TypeError, ValueError):
        return 1


def _number(value: object) -> float:
    return abs(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
