"""``transformer``: the Transformer++ (Llama) baseline: RoPE, RMSNorm, SwiGLU."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from miras_jax.models.base import LM, LMConfig, check_attention_fields, paper_sizes
from miras_jax.models.blocks import Block, decoding_attention
from miras_jax.models.registry import register


@dataclasses.dataclass(frozen=True)
class TransformerConfig(LMConfig):
  """``transformer``: the Transformer++ baseline (Llama: RoPE, RMSNorm, SwiGLU)."""

  window: int | None = None  # sliding window (None: full causal attention)
  max_len: int = 512  # decode cache length for full attention (the longest sequence decoded)
  attention_conv: int = 0  # taps of a short causal conv + SiLU on q, k, v (0: none, Transformer++)
  attention_chunk: int = 0  # queries attended at a time (0: all; paper sizes 512: T·512 scores)

  SIZE_FIELDS: ClassVar[dict] = paper_sizes(
    (3328, 2368, 3904, 5184), max_len=4096, attention_chunk=512
  )

  def _check(self):
    if self.window is not None and self.window < 1:
      raise ValueError(f"TransformerConfig.window must be >= 1 or None; got {self.window}")
    check_attention_fields(self)
    if self.max_len < 1:
      raise ValueError(f"TransformerConfig.max_len must be >= 1; got {self.max_len}")


@register("transformer")
class Transformer(LM):
  """Transformer++: ``x += Attention(RMSNorm x); x += SwiGLU(RMSNorm x)`` with RoPE. Decoding
  keeps the last ``max_len`` tokens (full attention) or the window; a sequence longer than
  ``max_len`` decodes as if the attention had a window of ``max_len``."""

  config_class = TransformerConfig

  def _block(self, c, layer, rngs):
    return Block(c, None, decoding_attention(c, rngs), rngs=rngs)
