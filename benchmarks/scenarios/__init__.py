"""Measurements, each run in a fresh child process (see :mod:`benchmarks.child`).

A fresh process per measurement keeps one contender's memory, threads and
imports from colouring another's RSS and CPU figures.
"""
