"""Shared defaults of the run configs (imported by the per-model files; not a config itself)."""

import copy
import os

import ml_collections

# Tiny Shakespeare, the local text corpus of the demos and tests: the ../shared/data copy beside the
# repository (CI has it at the same relative path), or $MIRAS_CORPUS_DIR when set.
SHAKESPEARE = os.environ.get(
  "MIRAS_CORPUS_DIR",
  os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "tinyshakespeare"
  ),
)

# Per paper size: (global batch, sequence length, peak lr) — MIRAS Table 5, Titans §5.1.
PAPER_TRAINING = {
  "170m": (128, 4096, 3e-3),
  "340m": (128, 4096, 1.5e-3),
  "760m": (128, 4096, 1.25e-3),
  "1.3b": (128, 4096, 1e-3),
}


def base(model: str, size: str = "tiny", **overrides) -> ml_collections.ConfigDict:
  """Language modelling on a local text corpus with model ``model`` at ``size``."""
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict()
  c.model.name = (
    model  # a name from miras_jax.models.names(), or a memory preset (miras_lm with it)
  )
  c.model.size = size  # tiny | 170m | 340m | 760m | 1.3b
  c.model.overrides = ml_collections.ConfigDict(overrides)  # fields of the model's config class
  # fields set only where the model's config class has them (overrides win)
  c.model.defaults = ml_collections.ConfigDict()

  c.data = ml_collections.ConfigDict()
  c.data.name = "text_corpus"  # mqar | text_corpus | a tfds catalog dataset prepared in data_dir
  c.data.data_dir = ""  # tfds data dir ("" = WORKDIR/tfds)
  c.data.options = ml_collections.ConfigDict(
    {"corpus_dir": SHAKESPEARE, "max_doc_bytes": 16384}
  )  # builder options (miras_jax.data.prepare)
  c.data.train_split = "train"  # split to train on
  c.data.eval_split = "validation"  # held-out split for evaluation and perplexity
  c.data.pack_len = 128  # tokens per packed training window (byte-level tokens)

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"  # adamw | muon | m3 | sgd
  c.optimizer.lr = 3e-3  # peak learning rate
  c.optimizer.warmup_steps = 100  # linear warmup steps
  c.optimizer.min_lr_ratio = 0.1  # final lr = lr · min_lr_ratio (cosine)
  c.optimizer.weight_decay = 0.1  # decoupled weight decay on matrices
  c.optimizer.b1 = 0.9  # Adam β1 / Muon momentum
  c.optimizer.b2 = 0.95  # Adam β2
  c.optimizer.eps = 1e-8  # Adam ε
  c.optimizer.clip_norm = 1.0  # global gradient-norm clip (0 = off)

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000  # optimizer steps
  c.train.batch_size = 16  # global batch (sequences)
  c.train.grad_accum = 1  # micro-batches per step
  c.train.seed = 0  # init and data order
  c.train.log_every = 10  # steps between metric lines
  c.train.eval_every = 200  # steps between evaluations (0 = at the end only)
  c.train.eval_batches = 4  # batches per evaluation
  c.train.checkpoint_every = 200  # steps between checkpoints
  c.train.keep_checkpoints = 3  # checkpoints kept
  c.train.async_checkpoints = True  # background checkpoint writes
  c.train.on_nonfinite = "stop"  # a non-finite loss/gradient: stop (exit 3) | skip the step
  c.train.max_skipped = 10  # on_nonfinite="skip": more skipped steps than this stops the run

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel size (-1: all devices left by fsdp × tensor)
  c.mesh.fsdp = 1  # parameter-sharded data parallelism
  c.mesh.tensor = 1  # tensor parallelism
  c.mesh.rules = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor"))

  if size != "tiny":
    batch, seq_len, lr = PAPER_TRAINING[size]
    c.train.batch_size = batch
    c.data.pack_len = seq_len
    c.data.options.max_doc_bytes = 1 << 20
    c.optimizer.lr = lr
    c.optimizer.warmup_steps = 2000
    c.train.steps = 30000
    c.train.eval_every = 1000
    c.train.checkpoint_every = 1000
  return c


def model_config(model: str, arg: str | None, **overrides) -> ml_collections.ConfigDict:
  """``arg`` is the size (default tiny)."""
  return base(model, arg or "tiny", **overrides)


def with_overrides(config, *, steps: int | None = None, lr: float | None = None, **model_overrides):
  """A copy of ``config`` with model overrides (and ``train.steps`` / ``optimizer.lr`` when given)
  applied."""
  c = copy.deepcopy(config)
  with c.unlocked():
    for k, v in model_overrides.items():
      c.model.overrides[k] = v
    if steps:
      c.train.steps = int(steps)
    if lr:
      c.optimizer.lr = float(lr)
  return c


def sweep(name: str, title: str, metric: str, tasks, lengths, variants, **fields):
  """A sweep spec (``miras_jax.eval.sweeps``; run by ``python -m experiments.sweep``): ``variants``
  are ``(name, run config)`` pairs in the table's order; ``fields``: examples, batch_size, reuse,
  match_params, report (see ``sweeps.SPEC_DEFAULTS``)."""
  s = ml_collections.ConfigDict()
  s.name = name  # OUT/<name>/ and docs/results/<name>.*
  s.title = title  # the plot's title
  s.metric = metric  # the table's metric: exact_match | token_accuracy
  s.tasks = tuple(tasks)  # evaluation tasks
  s.lengths = tuple(lengths)  # evaluation context lengths
  s.variants = tuple(variants)  # (name, run config) pairs
  for key, value in fields.items():
    s[key] = value
  return s


def parse_arg(arg: str | None, **defaults) -> dict:
  """``"a,k=v,…"`` → ``{first key: "a", k: "v", …}`` over ``defaults`` (the first key takes a bare
  value): the argument of a config with options, e.g. ``miras_models.py:s_niah_pk,clip=10``."""
  out = dict(defaults)
  first = next(iter(defaults))
  for part in filter(None, (arg or "").split(",")):
    key, sep, value = part.partition("=")
    key, value = (key, value) if sep else (first, key)
    if key not in defaults:
      raise ValueError(f"config argument {part!r}: unknown option; known: {', '.join(defaults)}")
    out[key] = value
  return out
