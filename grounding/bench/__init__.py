"""Benchmarks that need no Ray: ROI extraction, the plain training loop, memory probes.
The Ray benchmarks live in ``grounding.distributed``.
"""
