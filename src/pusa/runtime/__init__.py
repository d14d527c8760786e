"""Running a loaded model on a device: the device check (`device`), memory tiers (`memory`), attention
kernels, compile and fp8 (`kernels`), and all of them in the order that works (`prepare`)."""
