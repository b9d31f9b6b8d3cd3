"""Inference engine: model loading, FIM prompts, decoding and post-processing.

Imports nothing from `splice.assistant`; `splice.kernels` is the only project package below it.
"""
