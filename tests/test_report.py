"""Report figures: every t-SNE panel carries a class legend."""
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from projnce_jax import report  # noqa: E402


def test_tsne_panel_has_a_class_legend():
  rng = np.random.default_rng(0)
  emb = rng.standard_normal((60, 2))
  labels = np.repeat(np.arange(3), 20)
  fig, ax = plt.subplots()
  report._scatter(ax, emb, labels, "t-SNE")  # pylint: disable=protected-access
  legend = ax.get_legend()
  assert legend is not None and legend.get_title().get_text() == "class"
  assert [t.get_text() for t in legend.get_texts()] == ["0", "1", "2"]
  plt.close(fig)


def test_comparison_report_tsne_has_one_legend(tmp_path, monkeypatch):
  for name in ("a", "b"):
    (tmp_path / name).mkdir()
    np.savez(tmp_path / name / "tsne.npz", embedding=np.zeros((4, 2)), label=np.arange(4))
    (tmp_path / name / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
  captured = {}
  real = plt.Figure.savefig

  def keep(fig, path, *a, **k):
    if str(path).endswith("tsne.png"):
      captured["legends"] = [ax.get_legend() is not None for ax in fig.axes]
    return real(fig, path, *a, **k)

  monkeypatch.setattr(plt.Figure, "savefig", keep)
  report.write_comparison_report(str(tmp_path), [{"name": "a"}, {"name": "b"}])
  assert captured["legends"] == [False, True]
