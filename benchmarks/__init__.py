"""Benchmarks of meetstream-live: ``python -m benchmarks --help`` (``make bench`` runs them all).

See docs/benchmarks.md for the results and how they are made.
"""
