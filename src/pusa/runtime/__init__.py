"""Running a loaded model on a device: the device check (`device`), memory tiers (`memory`), attention
kernels, compile and fp8 (`kernels`), all of them in the order that works (`prepare`), two experts moved at
the boundary (`expert_swap`, `expert_stream`), and the placement of a whole model (`placement`)."""
