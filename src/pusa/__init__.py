"""pusa: Pusa V1 video generation (per-frame-timestep Wan2.1) as a studio, a CLI and a Python API."""

__version__ = "0.1.0"
