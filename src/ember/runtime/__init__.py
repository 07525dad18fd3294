"""Compile graphs into Plans and run them; the Model API on top.

Knows nothing about where requests come from (serving) or how peers are timed (bench).
"""

from ember.runtime.model import Model, TensorSpec, load
from ember.runtime.plan import Plan, Step, Subgraph, compile_graph

__all__ = ["Model", "Plan", "Step", "Subgraph", "TensorSpec", "compile_graph", "load"]
