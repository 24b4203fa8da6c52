"""Decoder (causal language model) support: the model wrapper, text packing, layer selection,
distillation losses, quality and speed measurements for `task: causal-lm`."""
