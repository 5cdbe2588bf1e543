"""The functional core of miras_jax: pure JAX, one sequence and one head, no flax.

The four MIRAS choices (``memory``, ``biases``, ``retention``, ``algorithms``) compose into a
``Rule``; ``recurrent`` runs any rule token by token (the ground truth); ``presets`` holds every
MIRAS Table 1 model. See ``CONVENTIONS.md`` for the maths conventions.
"""

from miras_jax.core import algorithms, biases, memory, presets, retention
from miras_jax.core.attention import KVCache, SoftmaxAttention, softmax_attention
from miras_jax.core.chunkwise import chunked
from miras_jax.core.gates import Gates
from miras_jax.core.memory import LinearMemory, MLPMemory
from miras_jax.core.reference import chunk_reference
from miras_jax.core.rule import MemoryState, Rule, recurrent, surprise

__all__ = [
  "Gates",
  "KVCache",
  "LinearMemory",
  "MLPMemory",
  "MemoryState",
  "Rule",
  "SoftmaxAttention",
  "algorithms",
  "biases",
  "chunk_reference",
  "chunked",
  "memory",
  "presets",
  "recurrent",
  "retention",
  "softmax_attention",
  "surprise",
]
