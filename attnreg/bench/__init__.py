"""Benchmarks of patterns across engines: inputs, timing and peak memory, the table and the plot."""
