"""The notebooks of examples/ run from a fresh kernel (nbclient), and what they print holds.
quickstart: the surprise falls after the writes, chunked == recurrent, two halves of the pipeline
== one call, the models' losses fall and the trained model recalls above chance. custom_rule: the
composed rule equals a numpy loop of its equation, chunked == chunk_reference, every parameter of
its layer gets a gradient."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]


def _run(name):
  nb = nbformat.read(ROOT / "examples" / name, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit it cleared"
  NotebookClient(
    nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": ROOT}}
  ).execute()
  return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def _numbers(pattern, text):
  return [float(x) for x in re.findall(pattern, text)]


@pytest.fixture(scope="module")
def quickstart():
  return _run("quickstart.ipynb")


def test_quickstart_runs_and_its_claims_hold(quickstart):
  out = quickstart
  ((before, after),) = re.findall(r"surprise\s+before ([\d.]+)\s+after ([\d.]+)", out)
  assert float(after) < float(before)
  assert _numbers(r"max \|chunked − recurrent\| = ([\d.e-]+)", out)[0] < 1e-4
  assert _numbers(r"max \|chunked − chunk_reference\| = ([\d.e-]+)", out)[0] < 1e-4
  assert "two halves == one call: True" in out
  falls = re.findall(r"loss ([\d.]+) → ([\d.]+)", out)
  # Moneta, Yaad, Memora, M3 and the decoded model
  assert len(falls) == 5 and all(float(b) < float(a) for a, b in falls), falls
  assert _numbers(r"recall accuracy on 32 new sequences: ([\d.]+)", out)[0] >= 2 * 0.0625


def test_custom_rule_matches_its_equation_in_every_form():
  out = _run("custom_rule.ipynb")
  assert _numbers(r"max \|recurrent − numpy\| = ([\d.e-]+)", out)[0] < 1e-5
  assert _numbers(r"max \|chunked − chunk_reference\| = ([\d.e-]+)", out)[0] < 1e-5
  assert _numbers(r"max \|chunked\(chunk 1\) − recurrent\| = ([\d.e-]+)", out)[0] < 1e-5
  assert "parameters without a gradient: 0" in out
