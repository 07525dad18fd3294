"""Fast kernels per backend, each checked against the NumPy reference in ember.ops.

Knows nothing about graphs: a kernel takes arrays and returns arrays.
"""
