"""Peak FLOP/s per device, model FLOPs per token and the model FLOPs utilisation (MFU)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["attention_keys", "lm_flops_per_token", "mfu", "peak_flops_per_device"]


# Dense (no structured sparsity) peak FLOP/s per JAX device, from the vendors' datasheets: NVIDIA
# quotes tensor-core figures "with sparsity", the dense ones are half. ``tensorfloat32`` is the
# TF32 tensor-core rate; ``float32`` the IEEE FP32 (non-tensor-core) rate. TPUs have no published
# float32 matmul rate (their MXUs run float32 dots as one or more bfloat16 passes), hence None.
# NB: at JAX's default matmul precision, float32 dots run as TF32 on these GPUs and as one bf16
# pass on TPUs, so ask for ``tensorfloat32`` (GPU) or ``bfloat16`` (TPU) for such runs.
_A100 = {"bfloat16": 312e12, "tensorfloat32": 156e12, "float32": 19.5e12}
_H100_SXM = {"bfloat16": 989.5e12, "tensorfloat32": 494.5e12, "float32": 67e12}
_H100_PCIE = {"bfloat16": 756.5e12, "tensorfloat32": 378e12, "float32": 51e12}
_HOPPER_NVL = {"bfloat16": 835.5e12, "tensorfloat32": 417.5e12, "float32": 60e12}


def _tpu(bf16: float) -> dict[str, float | None]:
  return {"bfloat16": bf16, "tensorfloat32": None, "float32": None}


# ``device.device_kind`` as JAX reports it (one JAX device per chip on v4 and later).
_TPU_PEAKS: dict[str, dict[str, float | None]] = {
  "TPU v4": _tpu(275e12),
  "TPU v5 lite": _tpu(197e12),  # v5e
  "TPU v5e": _tpu(197e12),
  "TPU v5": _tpu(459e12),  # v5p
  "TPU v5p": _tpu(459e12),
  "TPU v6 lite": _tpu(918e12),  # v6e (Trillium)
  "TPU v6e": _tpu(918e12),
}

_DTYPE_ALIASES = {
  "bfloat16": "bfloat16",
  "bf16": "bfloat16",
  "tensorfloat32": "tensorfloat32",
  "tf32": "tensorfloat32",
  "float32": "float32",
  "fp32": "float32",
  "f32": "float32",
}


def _peaks_for_kind(kind: str) -> Mapping[str, float | None] | None:
  if kind in _TPU_PEAKS:
    return _TPU_PEAKS[kind]
  k = kind.lower()
  if "a100" in k:  # NVIDIA A100-SXM4-40GB / -80GB, A100-PCIE-40GB, A100 80GB PCIe: same peaks
    return _A100
  if "h100" in k or "h200" in k:  # H100 80GB HBM3 (SXM), H100 PCIe, H100 NVL, H200, H200 NVL, GH200
    if "nvl" in k:
      return _HOPPER_NVL
    if "pcie" in k:
      return _H100_PCIE
    return _H100_SXM
  return None


def peak_flops_per_device(device: Any = None, *, dtype: Any = "bfloat16") -> float | None:
  """Dense peak FLOP/s of one device for matmuls in ``dtype``, or None when unknown.

  Known: TPU v4, v5e, v5p, v6e and NVIDIA A100, H100 (SXM/PCIe/NVL), H200 (SXM/NVL), matched on
  ``device.device_kind``; ``device`` defaults to ``jax.devices()[0]``. CPUs and other chips give
  None: MFU is then not reported (``mfu`` returns None). ``dtype``: ``"bfloat16"`` (default),
  ``"tensorfloat32"`` or ``"float32"`` (also ``jnp.bfloat16``/``jnp.float32``, ``"bf16"``,
  ``"tf32"``, ``"fp32"``); see the table's comment for which one a float32 run uses. Multiply by
  ``jax.device_count()`` for the whole job.
  """
  if isinstance(dtype, str):
    key = _DTYPE_ALIASES.get(dtype.lower())
  else:
    key = _DTYPE_ALIASES.get(np.dtype(dtype).name)
  if key is None:
    raise ValueError(f"unknown dtype {dtype!r}; use bfloat16, tensorfloat32 or float32")
  if device is None:
    device = jax.devices()[0]
  if getattr(device, "platform", None) == "cpu":
    return None
  peaks = _peaks_for_kind(str(getattr(device, "device_kind", "")))
  return None if peaks is None else peaks[key]


def mfu(
  tokens_per_second: float | None, flops_per_token: float, peak_flops: float | None = None
) -> float | None:
  """Model FLOPs utilisation: ``tokens_per_second * flops_per_token / peak_flops`` (a fraction).

  ``tokens_per_second`` is the whole job's throughput and ``peak_flops`` the whole job's peak,
  normally ``peak_flops_per_device() * jax.device_count()``; left as None, that product is used
  (bfloat16 peaks). Returns None when the peak is unknown (CPU, unlisted chips) or the throughput
  is None (not yet measured): MFU is then not reported.
  """
  if tokens_per_second is None:
    return None
  if peak_flops is None:
    per_device = peak_flops_per_device()
    if per_device is None:
      return None
    peak_flops = per_device * jax.device_count()
  if peak_flops <= 0:
    raise ValueError(f"peak_flops must be positive, got {peak_flops}")
  return float(tokens_per_second) * float(flops_per_token) / float(peak_flops)


def attention_keys(model_config) -> int | None:
  """Keys per query of a model's softmax attention, as ``lm_flops_per_token``'s
  ``attention_window``: None for full attention (a ``window`` of None), the window, MAC's
  ``[h ‖ z]`` segment (2·C), 0 without attention."""
  if hasattr(model_config, "segment"):
    return 2 * model_config.segment
  if hasattr(model_config, "window"):
    return model_config.window
  return 0


def lm_flops_per_token(
  n_params: int, n_layers: int, dim: int, seq_len: int, attention_window: int | None = 0
) -> float:
  """Training FLOPs per token of a language model: ``6·N + 12·L·E·min(T, window)``.

  ``6·N``: a forward pass costs 2 FLOPs (multiply + add) per parameter per token and the backward
  pass twice that (Kaplan et al. 2020, "Scaling Laws for Neural Language Models", sec. 2.1). The
  attention term is that of PaLM (Chowdhery et al. 2022, appendix B, ``6N + 12·L·H·Q·T`` with
  ``H·Q = E``): per layer, token and attended key the scores ``QKᵀ`` and the weighted sum ``AV`` cost
  ``2·E`` FLOPs each forward, times 3 for forward + backward. As in PaLM, causal masking is not
  discounted (each query counts all ``T`` keys); with a sliding window each query counts
  ``min(T, window)`` keys.

  Args:
    n_params: parameters used in matmuls per token (Kaplan et al. count non-embedding parameters;
      an untied output projection is a matmul and counts).
    n_layers: L, layers with softmax attention.
    dim: E, the attention width (heads x head dim).
    seq_len: T, training sequence length.
    attention_window: 0 (default): no softmax attention (recurrent/memory-only layers; the
      attention term vanishes); None: full attention over ``seq_len``; w > 0: sliding window w.

  Neural-memory updates at test time (Titans/MIRAS inner-loop gradients) are not counted: the
  number is the standard transformer-style estimate, comparable across runs, not an exact count.
  """
  if min(n_params, n_layers, dim, seq_len) < 0:
    raise ValueError("n_params, n_layers, dim and seq_len must be non-negative")
  if attention_window is None:
    keys = seq_len
  elif attention_window < 0:
    raise ValueError(f"attention_window must be None or >= 0, got {attention_window}")
  else:
    keys = min(seq_len, attention_window)
  return 6.0 * n_params + 12.0 * n_layers * dim * keys
