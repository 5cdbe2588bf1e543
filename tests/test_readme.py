"""The README's examples run as written."""

import pathlib
import re


def test_readme_examples_run():
  text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert len(blocks) == 2, "the README has a functional-API and a models example"
  namespaces = []
  for block in blocks:
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    namespaces.append(namespace)
  assert namespaces[0]["ys"].shape == (128, 64)
  assert namespaces[1]["logits"].shape == (2, 1, 64) and namespaces[1]["new"].shape == (2, 8)
