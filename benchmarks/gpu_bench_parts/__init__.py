"""The pieces of `benchmarks/gpu_bench.py`, one module per kind of row (`dit_rows`, `speed_rows`,
`tier_rows`, `encoder_rows`) beside what they share (`specs`, `timing`, `models`, `results`, `report`).
`benchmarks/parallel_overhead.py` reuses `specs`, `timing` and `models`.
"""
