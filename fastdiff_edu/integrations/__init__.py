"""Bridges to other diffusion libraries; each is an optional dependency, imported on demand."""
