"""The README's example runs as written."""

import pathlib
import re


def test_readme_example_runs():
  text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert blocks, "the README has no python example"
  for block in blocks:
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
  assert namespace["ys"].shape == (128, 64)
