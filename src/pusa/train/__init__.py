"""Training and evaluation of the tiny Pusa demo model: procedural video world, detector, training run,
evaluation.

This package module imports nothing, so the CLI can read the names below without loading torch.
"""

# The training run's stages, in the order they run (pusa.train.run).
STAGES = ("tokenizer", "vae", "decoder", "pool", "base", "vta", "export")
# The tasks `pusa eval demo` scores (pusa.train.evaluate).
EVAL_TASKS = ("t2v", "i2v", "start_end", "keyframes", "extension", "transition", "long")
