"""Memory planning: value lifetimes and sizes in, arena offsets out.

Knows nothing about ops, graphs or dtypes; the runtime turns its values into `Request`s.
"""

from ember.memory.planner import ArenaPlan, Request, format_report, plan_arena

__all__ = ["ArenaPlan", "Request", "format_report", "plan_arena"]
