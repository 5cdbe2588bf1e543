"""``miras_jax.train.flops``: ``mfu``, ``peak_flops_per_device`` and ``lm_flops_per_token`` on
hand-computed examples."""

from __future__ import annotations

import types

import jax.numpy as jnp
import pytest

from miras_jax import models
from miras_jax.train.flops import attention_keys, lm_flops_per_token, mfu, peak_flops_per_device

# ------------------------------------------------------------------------------------------------
# FLOPs and MFU
# ------------------------------------------------------------------------------------------------


def _device(kind: str, platform: str = "gpu"):
  return types.SimpleNamespace(device_kind=kind, platform=platform)


def test_peak_flops_table():
  h100 = _device("NVIDIA H100 80GB HBM3")
  assert peak_flops_per_device(h100) == 989.5e12
  assert peak_flops_per_device(h100, dtype=jnp.float32) == 67e12
  assert peak_flops_per_device(h100, dtype="tf32") == 494.5e12
  assert peak_flops_per_device(_device("NVIDIA H100 PCIe")) == 756.5e12
  assert peak_flops_per_device(_device("NVIDIA H200")) == 989.5e12
  assert peak_flops_per_device(_device("NVIDIA H200 NVL")) == 835.5e12
  assert peak_flops_per_device(_device("NVIDIA A100-SXM4-80GB"), dtype="fp32") == 19.5e12
  assert peak_flops_per_device(_device("NVIDIA A100 80GB PCIe"), dtype=jnp.bfloat16) == 312e12
  for kind, peak in [("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12)]:
    assert peak_flops_per_device(_device(kind, "tpu")) == peak
  assert peak_flops_per_device(_device("TPU v6 lite", "tpu")) == 918e12
  assert peak_flops_per_device(_device("TPU v6 lite", "tpu"), dtype="float32") is None
  assert peak_flops_per_device(_device("NVIDIA GeForce RTX 4090")) is None
  assert peak_flops_per_device(_device("TPU v4 lite", "tpu")) is None
  assert peak_flops_per_device(_device("cpu", "cpu")) is None
  assert peak_flops_per_device() is None  # the test platform is CPU
  with pytest.raises(ValueError):
    peak_flops_per_device(h100, dtype="int8")


def test_mfu_hand_example():
  # 8 x H100 SXM at 50k tok/s on a 1B-parameter model, 6e9 FLOPs/token:
  # 5e4 * 6e9 = 3e14 FLOP/s over 8 * 989.5e12 = 7.916e15 FLOP/s -> 3.7898 %.
  peak = peak_flops_per_device(_device("NVIDIA H100 80GB HBM3")) * 8
  assert mfu(5e4, 6e9, peak) == pytest.approx(3e14 / 7.916e15)
  assert mfu(5e4, 6e9, peak) == pytest.approx(0.037898, rel=1e-4)
  assert mfu(1000.0, 1e9, 4e12) == 0.25
  assert mfu(1000.0, 1e9) is None  # CPU: peak unknown, MFU not reported
  assert mfu(None, 1e9, 4e12) is None
  with pytest.raises(ValueError):
    mfu(1.0, 1.0, 0.0)


def test_lm_flops_per_token_hand_example():
  # N = 1e6, L = 2, E = 64, T = 128: 6N = 6e6; 12 L E T = 12*2*64*128 = 196,608.
  assert lm_flops_per_token(1_000_000, 2, 64, 128, attention_window=None) == 6_196_608
  assert lm_flops_per_token(1_000_000, 2, 64, 128, attention_window=32) == 6_000_000 + 49_152
  assert lm_flops_per_token(1_000_000, 2, 64, 128, attention_window=4096) == 6_196_608
  assert lm_flops_per_token(1_000_000, 2, 64, 128) == 6_000_000  # window 0: no softmax attention
  with pytest.raises(ValueError):
    lm_flops_per_token(1, 1, 1, 1, attention_window=-1)


def test_attention_keys_per_model():
  keys = lambda name, **f: attention_keys(models.config(name, "tiny", **f))  # noqa: E731
  assert keys("transformer") is None  # full attention
  assert keys("transformer", window=32) == 32
  assert keys("titans_mac", segment=8) == 16  # [h ‖ z]
  assert keys("titans_mag", window=16) == 16
  assert keys("miras_lm") == 0 and keys("hope") == 0
