"""The sweeps' MQAR config: smaller and harder than ``configs/mqar.py`` (more key-value pairs,
fewer steps) so that variants separate and one run takes well under a minute on 2 CPU cores.

  python -m experiments.train --config=configs/sweeps/mqar.py --workdir=/tmp/sweep_mqar
  python -m experiments.train --config=configs/sweeps/mqar.py:gated_delta_net --workdir=/tmp/s

``arg``: a model name (default miras_lm, titans_lmm memory) or a memory preset name (then
miras_lm with that preset: ``miras_jax.models.resolve``, so this config imports only
ml_collections). The sweeps (``configs/sweeps/<sweep>.py``) override model fields per
variant. Chance accuracy on the queried values is 1 / (vocab / 2).

``guard_options`` are the numerical guards the sweeps run memories with at the higher lr 1e-2
(the needle config, and MQAR re-runs at that lr): none is in the papers, each was added after a
diverged run was replayed and diagnosed (docs/models.md, "Numerical guards"):

- ``grad_clip=INNER_CLIP`` for every MLP memory: Moneta's inner loop blew up to NaN by optimizer
  step 60 without it. Measured later (``configs/sweeps/inner_clip.py``): 1 is too tight (it nearly stops the
  Titans LMM learning MQAR; 10 and 3 learn, none diverges 3 of 3); it stays 1 here because the
  published needle and lr-1e-2 runs were made with it;
- Moneta ``eps=LQ_EPS``, a floor of ‖A‖_4 in W = A / ‖A‖_4²: a learned retention gate α ≈ 1e-5
  emptied A to ‖A‖_4 ≈ 1e-9 (W ≈ 1e9) and the outer gradients went NaN at step 168; in healthy
  steps ‖A‖_4 stayed above 0.025, where the floor is inactive;
- Memora ``eps=KL_EPS``, a floor of W before log W: α ≈ 1e-10 met W ≈ 1e-22, the derivative α / W
  overflowed and training went NaN at step ~375 (after reaching loss 0.2).
"""

import copy

import ml_collections

from configs import common

DATA_DIR = "runs/sweeps/tfds"  # prepared datasets, shared by all sweep runs (git-ignored)
SEQ_LEN = 64  # tokens per example
VOCAB = 64  # MQAR vocabulary (keys from one half, values from the other)
PAIRS = 8  # key-value pairs per example, every key queried once
INNER_CLIP = 1.0  # per-token inner-gradient norm clip of the MLP memories (grad_clip)
LQ_EPS = 0.01  # Moneta's floor of ‖A‖_4 in its ℓq normaliser (presets.moneta eps)
KL_EPS = 1e-6  # Memora's floor of W before log W (presets.memora eps; the library default 1e-30)


GUARDS = {  # memory preset → preset_options of the sweeps' numerical guards (the MLP memories)
  "ttt_mlp": (("grad_clip", INNER_CLIP),),
  "titans_lmm": (("grad_clip", INNER_CLIP),),
  "moneta": (("grad_clip", INNER_CLIP), ("eps", LQ_EPS)),
  "yaad": (("grad_clip", INNER_CLIP),),
  "memora": (("grad_clip", INNER_CLIP), ("eps", KL_EPS)),
}


def get_config(arg: str | None = None):
  name = arg or "miras_lm"  # a model, or a memory preset (the library runs miras_lm with it)
  overrides = dict(vocab=VOCAB, dim=64, layers=2, heads=2, head_dim=32, mlp_hidden=128)
  if name != "transformer":
    overrides.update(chunk_size=16, gate_rank=16)
  if name == "miras_lm":
    overrides.setdefault("preset", "titans_lmm")
  c = common.base(name, "tiny", **overrides)
  c.data.name = "mqar"
  c.data.options = ml_collections.ConfigDict(
    dict(seq_len=SEQ_LEN, vocab=VOCAB, num_pairs=PAIRS, train_size=20000, test_size=512, seed=0)
  )  # builder options: sequence length, vocabulary, key-value pairs, examples per split, seed
  return short_run(c)


def short_run(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The training settings every sweep config shares (a short run, one final checkpoint)."""
  c.data.data_dir = DATA_DIR  # prepared datasets shared by every run of the sweeps
  c.data.eval_split = "test"  # held-out split of the loop's evaluation
  c.data.pack_len = 0  # the synthetic tasks' examples are fixed-length
  c.optimizer.lr = 3e-3  # peak learning rate
  c.optimizer.warmup_steps = 30  # linear warmup steps
  c.optimizer.weight_decay = 0.0  # no decoupled weight decay (a short synthetic run)
  c.train.steps = 300  # optimizer steps
  c.train.batch_size = 16  # sequences per step
  c.train.log_every = 10  # steps between metric lines (the loss curve)
  c.train.eval_every = 0  # the loop evaluates at the end only
  c.train.eval_batches = 4  # batches of the loop's final evaluation
  c.train.checkpoint_every = 100000  # one checkpoint, at the end (evaluate restores it)
  c.train.keep_checkpoints = 1  # only the final checkpoint is needed
  c.train.async_checkpoints = False  # the sweep evaluates right after training
  return c


def guard_options(preset: str) -> tuple:
  """The ``preset_options`` of the sweeps' numerical guards for memory ``preset`` (``GUARDS``; ()
  for the linear memories: they keep their exact, unclipped form)."""
  return GUARDS.get(preset, ())


def with_inner_clip(c: ml_collections.ConfigDict, clip: float) -> ml_collections.ConfigDict:
  """A copy of ``c`` whose memory's ``grad_clip`` option is ``clip``, in its preset_options and in
  its guard table (``model.preset_defaults``); configs without one are returned unchanged: linear
  memories and the Transformer keep their unclipped form."""
  swap = lambda options: tuple((k, clip if k == "grad_clip" else v) for k, v in options)
  has_clip = lambda options: any(k == "grad_clip" for k, _ in options)
  own = tuple(c.model.overrides.get("preset_options", ()))
  tables = dict(c.model.get("preset_defaults") or {})
  if not has_clip(own) and not any(has_clip(t) for t in tables.values()):
    return c
  c = copy.deepcopy(c)
  with c.unlocked():
    if has_clip(own):
      c.model.overrides.preset_options = swap(own)
    if tables:
      c.model.preset_defaults = ml_collections.ConfigDict({p: swap(t) for p, t in tables.items()})
  return c
