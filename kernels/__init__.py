"""Compute kernels (RoPE re-rotation, ...): each has a pure-torch reference and a CPU fallback."""
