"""Weights: the built-in models and what a `--model` names (`registry`, no torch), checkpoint layouts and
component loading (`checkpoints`), whole model folders (`folders`), and the Pusa LoRA in every form
(`lora`)."""
