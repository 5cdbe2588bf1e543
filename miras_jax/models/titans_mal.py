"""``titans_mal``: Titans memory as a layer (Titans Eq 29–31)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from miras_jax.models.base import HYBRID_LAYERS, paper_sizes
from miras_jax.models.hybrid_lm import HybridLM, HybridLMConfig
from miras_jax.models.registry import register


@dataclasses.dataclass(frozen=True)
class TitansMALConfig(HybridLMConfig):
  """``titans_mal`` (Titans Eq 29–31): memory layer → sliding-window attention with persistent
  tokens → MLP."""

  window: int = 16  # sliding window w of the attention
  persistent: int = 4  # learned persistent tokens N_p (Titans Eq 19)

  SIZE_FIELDS: ClassVar[dict] = paper_sizes(
    (1920, 2304, 4032, 5376), HYBRID_LAYERS, window=2048, persistent=32, attention_chunk=512
  )


@register("titans_mal")
class TitansMAL(HybridLM):
  """Titans MAL (Eq 29–31): the memory layer, then sliding-window attention whose persistent
  tokens are always visible, then the MLP. Where the paper is silent: Eq 29 prepends the
  persistent tokens to the memory's input too; we give the memory a learned initial state instead
  (a data-independent prefix through the memory only sets that state) and keep the tokens as the
  attention's prefix, where they stay visible beyond the window."""

  config_class = TitansMALConfig
