"""Executes notebooks/projnce_demo.ipynb in its small setting and checks its outputs.

Also checks the committed file: executed, with its plots, and one install setting.
"""
import os
import re
import subprocess

import nbformat
import pytest

nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "projnce_demo.ipynb")


def _text(cell) -> str:
  parts = []
  for out in cell.get("outputs", []):
    if out.get("output_type") == "stream":
      parts.append(out.get("text", ""))
    elif "data" in out:
      parts.append(out["data"].get("text/plain", ""))
  return "".join(parts)


def test_notebook_runs_in_small_setting(tmp_path, monkeypatch):
  # The kernel inherits this environment: the small setting, one CPU device (the test
  # suite's conftest asks XLA for 8 fake devices).
  monkeypatch.setenv("PROJNCE_NOTEBOOK_SMALL", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  monkeypatch.setenv("XLA_FLAGS", " ".join(flags))
  monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws PNGs

  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                   resources={"metadata": {"path": str(tmp_path)}})
  try:
    client.execute()  # raises CellExecutionError on any failing cell
  finally:
    nbformat.write(nb, str(tmp_path / "executed.ipynb"))  # for inspection after a failure

  code = [c for c in nb.cells if c.cell_type == "code"]
  text = "\n".join(_text(c) for c in code)
  assert "SMALL = True" in text
  for name in ("projnce (centroid/sample)", "supcon", "infonce (2 views)", "mi_lower_bound",
               "adjustment", "infonce_term"):
    assert name in text, name
  assert "true I(X;C)" in text and "ProjNCE mi_lower_bound" in text
  assert "linear_probe_accuracy" in text and "knn_accuracy" in text
  assert "t-SNE points: 300" in text
  images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert images, "the t-SNE cell draws a figure"


def test_committed_notebook_is_executed_with_plots():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(c.get("execution_count") for c in code), "commit the notebook executed"
  assert all(c.execution_count == i + 1 for i, c in enumerate(code)), "run all, in order"
  assert not [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
  images = [o for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert images, "the committed notebook shows its t-SNE plot"


def test_one_install_setting_drives_pip(monkeypatch, tmp_path):
  """The first code cell installs only when the import fails: the enclosing checkout with
  its [train] extra when there is one, else INSTALL_FROM with the [train] extra."""
  nb = nbformat.read(NOTEBOOK, as_version=4)
  source = next(c for c in nb.cells if c.cell_type == "code").source
  settings = re.findall(r"^INSTALL_FROM = (.+)$", source, flags=re.M)
  assert len(settings) == 1 and not re.search(r"<[a-z]+>", source)
  import importlib.util  # pylint: disable=g-import-not-at-top
  real_find_spec = importlib.util.find_spec
  for where, missing in ((os.path.join(ROOT, "notebooks"), True), (str(tmp_path), True),
                         (str(tmp_path), False)):
    calls = []
    monkeypatch.setattr(subprocess, "check_call", calls.append)
    monkeypatch.chdir(where)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, m=missing: None if m and name == "projnce_jax"
                        else real_find_spec(name, *a))
    namespace = {}
    exec(compile(source, "cell1", "exec"), namespace)  # pylint: disable=exec-used
    if not missing:
      assert calls == []  # importable: nothing installed
      continue
    want = (ROOT if where != str(tmp_path) else namespace["INSTALL_FROM"]) + "[train]"
    assert calls == [[namespace["sys"].executable, "-m", "pip", "install", "-q", want]]


def test_committed_outputs_are_current_and_portable():
  """No absolute path of the machine it ran on; tables and aux keys the code writes now."""
  from projnce_jax import losses, report  # pylint: disable=g-import-not-at-top
  nb = nbformat.read(NOTEBOOK, as_version=4)
  text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
  paths = re.findall(r"(?<![\w.~])/(?:tmp|work|home|root|Users|var|private|opt|mnt)/\S*", text)
  assert not paths, paths
  assert not re.search(r"[A-Z]:\\\\", text)
  header = report.results_table([]).split("\n")[0]
  tables = [l for l in text.split("\n") if l.startswith("| run |")]
  assert tables and all(l == header for l in tables), (tables, header)
  aux_lines = [l for l in text.split("\n") if re.search(r"\bloss = ", l)]
  names = set(re.findall(r"(\w+) = -?[0-9]", "\n".join(aux_lines))) - {"loss"}
  assert names and names <= set(losses.AUX_KEYS), names - set(losses.AUX_KEYS)
