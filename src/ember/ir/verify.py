"""Graph verification: catch a malformed graph at load time, naming the node and what is wrong.

Checks what would otherwise surface as a confusing failure mid-run: cycles, inputs that nothing
produces, values produced twice, graph outputs nobody produces, and domains with no opset import.
It knows nothing about which ops ember implements (that is the compiler's question).
"""

from __future__ import annotations

import heapq

import onnx_ir as ir

from ember.errors import ModelError


def describe(node: ir.Node) -> str:
    """How errors name a node: `node 'conv1' (Conv)`, or by position when it has no name."""
    kind = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
    if node.name:
        return f"node {node.name!r} ({kind})"
    graph = node.graph
    index = next((i for i, n in enumerate(graph) if n is node), None) if graph is not None else None
    return f"unnamed node #{index} ({kind})" if index is not None else f"unnamed node ({kind})"


def subgraph_reads(node: ir.Node) -> list[ir.Value]:
    """Values that a node's subgraphs read from enclosing scopes (a hidden input of the node)."""
    reads: list[ir.Value] = []
    for attr in node.attributes.values():
        graphs = []
        if attr.type == ir.AttributeType.GRAPH:
            graphs = [attr.value]
        elif attr.type == ir.AttributeType.GRAPHS:
            graphs = list(attr.value)
        for g in graphs:
            own = set(g.inputs) | set(g.initializers.values())
            for n in g:
                own.update(n.outputs)
            for n in g:
                for v in list(n.inputs) + subgraph_reads(n):
                    if v is not None and v.name and v not in own:
                        reads.append(v)
    return reads


def topological_order(graph: ir.Graph) -> list[ir.Node]:
    """The graph's nodes with every producer before its consumers; ModelError on a cycle.

    Keeps the file's order when it is already valid, and is otherwise stable (readable profiles).
    """
    nodes = list(graph)
    index = {n: i for i, n in enumerate(nodes)}
    deps: list[set[int]] = []
    for n in nodes:
        producers = (v.producer() for v in list(n.inputs) + subgraph_reads(n) if v is not None)
        deps.append({index[p] for p in producers if p is not None and p in index})
    if all(j < i for i, d in enumerate(deps) for j in d):
        return nodes
    users: list[list[int]] = [[] for _ in nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        stuck = [nodes[i] for i, w in enumerate(waiting) if w > 0]
        names = ", ".join(describe(n) for n in stuck[:5])
        raise ModelError(
            f"graph {graph.name!r} has a cycle: {len(stuck)} nodes wait on each other, "
            f"among them {names}"
        )
    return order


def verify_graph(
    graph: ir.Graph, opsets: dict[str, int], outer: frozenset[ir.Value] = frozenset()
) -> None:
    """Raise ModelError for the first structural problem found in `graph` or its subgraphs."""
    available = set(outer) | set(graph.inputs) | set(graph.initializers.values())
    producers: dict[str, ir.Node] = {}
    for n in graph:
        for v in n.outputs:
            if not v.name:
                continue
            if v.name in producers:
                raise ModelError(
                    f"value {v.name!r} is produced twice: by {describe(producers[v.name])} "
                    f"and by {describe(n)}"
                )
            producers[v.name] = n
            available.add(v)
    for v in graph.inputs:
        if v.name in producers:
            raise ModelError(
                f"graph input {v.name!r} is also produced by {describe(producers[v.name])}"
            )
    for n in graph:
        if (n.domain or "") not in opsets and not (n.domain == "ai.onnx" and "" in opsets):
            raise ModelError(
                f"{describe(n)} uses domain {n.domain!r}, which the model does not import "
                f"(opset_import has: {', '.join(repr(d) for d in opsets) or 'nothing'})"
            )
        for i, maybe_v in enumerate(n.inputs):
            if maybe_v is not None and maybe_v.name and maybe_v not in available:
                raise ModelError(
                    f"{describe(n)} input {i} {maybe_v.name!r} is not produced by any node, "
                    "graph input, initializer or enclosing graph"
                )
    for v in graph.outputs:
        if v not in available:
            raise ModelError(f"graph output {v.name!r} is not produced by any node or input")
    topological_order(graph)
    for n in graph:
        for attr in n.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                verify_graph(attr.value, opsets, frozenset(available))
            elif attr.type == ir.AttributeType.GRAPHS:
                for g in attr.value:
                    verify_graph(g, opsets, frozenset(available))


def verify(model: ir.Model) -> None:
    """Check a whole model; raise ModelError naming the first problem."""
    verify_graph(model.graph, dict(model.opset_imports))
