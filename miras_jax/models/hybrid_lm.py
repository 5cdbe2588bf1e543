"""``hybrid_lm``: Samba-style memory block → sliding-window attention → MLP per layer (MIRAS Fig 2,
"-H").
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from miras_jax.models.base import (
  HYBRID_LAYERS,
  LM,
  MemoryFields,
  check_attention_fields,
  paper_sizes,
)
from miras_jax.models.blocks import Block, neural_memory, swa
from miras_jax.models.registry import register


@dataclasses.dataclass(frozen=True)
class HybridLMConfig(MemoryFields):
  """``hybrid_lm``: Samba-style memory block → sliding-window attention → MLP per layer."""

  window: int = 64  # sliding window w of the attention (tokens t − w < j ≤ t)
  persistent: int = 0  # learned persistent tokens N_p visible to every attention query
  memory_layers: tuple | None = None  # layers with a memory block (None: all; others SWA + MLP)
  attention_conv: int = 0  # taps of a short causal conv + SiLU on the SWA's q, k, v (0: none)
  attention_chunk: int = 0  # queries the SWA attends at a time (0: all; paper sizes 512)

  SIZE_FIELDS: ClassVar[dict] = paper_sizes(
    (1920, 2304, 4096, 5376), HYBRID_LAYERS, window=2048, attention_chunk=512
  )

  def _check(self):
    super()._check()
    check_attention_fields(self)
    if self.window < 1:
      raise ValueError(f"{type(self).__name__}.window must be >= 1; got {self.window}")
    if self.persistent < 0:
      raise ValueError(f"{type(self).__name__}.persistent must be >= 0; got {self.persistent}")
    if self.memory_layers is not None and not all(
      isinstance(i, int) and 0 <= i < self.layers for i in self.memory_layers
    ):
      raise ValueError(
        f"memory_layers must be a tuple of layer indices in [0, {self.layers}); "
        f"got {self.memory_layers!r}"
      )

  def has_memory(self, layer: int) -> bool:
    return self.memory_layers is None or layer in self.memory_layers


@register("hybrid_lm")
class HybridLM(LM):
  """Samba-style: memory block → sliding-window attention → MLP per layer; layers outside
  ``memory_layers`` have the attention and the MLP only."""

  config_class = HybridLMConfig

  def _block(self, c, layer, rngs):
    memory = neural_memory(c, rngs) if c.has_memory(layer) else None
    return Block(c, memory, swa(c, rngs, c.persistent), rngs=rngs)
