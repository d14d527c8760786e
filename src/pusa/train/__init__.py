"""Training helpers for the tiny Pusa demo model: a procedural video world and a pixel-space detector."""
