"""docs/extending.md runs as written: its blocks, executed in order in one namespace, build a new
attentional bias, retention gate, model family and task and check each against numpy, the forward
pass or the data it prepares."""

import pathlib
import re

from miras_jax.data import registry as tasks
from miras_jax.models import registry


def test_the_extension_guide_runs():
  text = (pathlib.Path(__file__).parents[1] / "docs" / "extending.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert len(blocks) == 5, "a bias, its use in a block, a retention gate, a model family, a task"
  namespace = {}
  try:
    for block in blocks:
      exec(compile(block, "docs/extending.md", "exec"), namespace)  # noqa: S102
  finally:
    registry._REGISTRY.pop(
      "interleaved", None
    )  # keep the suite's model and task lists as they were
    tasks.DATASETS.pop("copy", None)
    tasks.EVAL_TASKS.pop("copy", None)
  assert namespace["Interleaved"].config_class is namespace["InterleavedConfig"]
