"""docs/extending.md runs as written: its blocks, executed in order in one namespace, build a new
attentional bias, retention gate and model family and check each against numpy or the forward pass."""

import pathlib
import re

from miras_jax.models import registry


def test_the_extension_guide_runs():
  text = (pathlib.Path(__file__).parents[1] / "docs" / "extending.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert len(blocks) == 4, "a bias, its use in a block, a retention gate and a model family"
  namespace = {}
  try:
    for block in blocks:
      exec(compile(block, "docs/extending.md", "exec"), namespace)  # noqa: S102
  finally:
    registry._REGISTRY.pop("interleaved", None)  # keep the suite's model list as it was
  assert namespace["Interleaved"].config_class is namespace["InterleavedConfig"]
