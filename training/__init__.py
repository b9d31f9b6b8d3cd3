"""Training: FIM data, LoRA fine-tuning, exit heads and evaluation.

May import `splice.completion`, never `splice.assistant`.
"""
