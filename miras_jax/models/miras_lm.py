"""``miras_lm``: Llama macro-architecture with the MIRAS block in place of attention (MIRAS §5.4)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from miras_jax.models.base import LM, MemoryFields, paper_sizes
from miras_jax.models.blocks import Block, neural_memory
from miras_jax.models.registry import register


@dataclasses.dataclass(frozen=True)
class MirasLMConfig(MemoryFields):
  """``miras_lm``: Llama blocks with the MIRAS memory block in place of attention."""

  SIZE_FIELDS: ClassVar[dict] = paper_sizes((2944, 1792, 3136, 4160))


@register("miras_lm")
class MirasLM(LM):
  """``x += MIRAS(RMSNorm x); x += SwiGLU(RMSNorm x)`` per layer (MIRAS §5.4)."""

  config_class = MirasLMConfig

  def _block(self, c, layer, rngs):
    return Block(c, neural_memory(c, rngs), None, rngs=rngs)
