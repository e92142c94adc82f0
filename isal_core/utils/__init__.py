"""Helpers every layer may use: atomic writes, seeds and devices, torchrun's primitives."""
