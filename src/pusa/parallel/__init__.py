"""Many processes (GPUs) for one video: context parallel and CFG-parallel (`pusa generate --parallel N`)."""
