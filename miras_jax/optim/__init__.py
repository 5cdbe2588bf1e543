"""optax transforms from Nested Learning: M3 (multi-scale momentum Muon) and Newton–Schulz."""

from miras_jax.optim.m3 import M3State, m3, newton_schulz, scale_by_m3

__all__ = ["M3State", "m3", "newton_schulz", "scale_by_m3"]
