"""Deprecated name of `pusa.train.run`, the training run's driver, kept so that old imports work: in pusa a
"recipe" is a conditioning recipe (`pusa.recipes`). `run_recipe` and `run_recipe_cli` are the old names of
`run_training` and `run_training_cli`."""

from pusa.train.run import (
    VTA_LORA_NAME,
    check_clip_lengths,
    check_device,
    run_training,
    run_training_cli,
    train_vta_on_folder,
)

run_recipe = run_training
run_recipe_cli = run_training_cli

__all__ = [
    "VTA_LORA_NAME",
    "check_clip_lengths",
    "check_device",
    "run_recipe",
    "run_recipe_cli",
    "run_training",
    "run_training_cli",
    "train_vta_on_folder",
]
