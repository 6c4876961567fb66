"""The benchmark suite: warm pools against spawn-per-task, the bare pipe and process pools.

Run it with ``python -m benchmarks run [--quick]``; see docs/benchmarks.md.
"""
