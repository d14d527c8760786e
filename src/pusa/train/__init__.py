"""Training and evaluation of the tiny Pusa demo model: procedural video world, detector, recipe, evaluation.

This package module imports nothing, so the CLI can read the names below without loading torch.
"""

# The recipe's stages, in the order they run (pusa.train.recipe).
STAGES = ("tokenizer", "vae", "decoder", "pool", "base", "vta", "export")
# The tasks `pusa eval demo` scores (pusa.train.evaluate).
EVAL_TASKS = ("t2v", "i2v", "start_end", "keyframes", "extension", "transition", "long")
