"""Figures render and write non-empty PNGs without leaking pyplot state."""

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from maelab.models.sdmae.figures import plot_example_windows
from maelab.viz.scores import plot_roc_pr, plot_score_histograms, plot_series_scores


def _check(fig, path):
    assert isinstance(fig, Figure)
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    open_before = plt.get_fignums()
    labels = rng.random(300) < 0.1
    disc = rng.normal(size=300) + 2 * labels
    recon = 10 ** (rng.uniform(2, 7, 300) + labels)  # heavy-tailed raw scores
    _check(plot_roc_pr({"discrepancy": (disc, labels), "reconstruction": (torch.tensor(recon),
                        torch.tensor(labels)), "empty": (disc, np.zeros(300))},
                       tmp_path / "roc_pr.png", title="test"), tmp_path / "roc_pr.png")
    _check(plot_score_histograms(recon, labels, 1e5, "reconstruction", tmp_path / "h.png"),
           tmp_path / "h.png")

    k, t, f = 2, 40, 3
    x = rng.normal(size=(k, t, f))
    point_labels = np.zeros((k, t), dtype=int)
    point_labels[1, 30:35] = 1
    path = tmp_path / "sub" / "examples.png"  # parent folders are created
    fig = plot_example_windows(x, x + 0.1, torch.tensor(x - 0.1), point_labels,
                               ["normal", "spike"], mask_last_n=10,
                               feature_names=["a", "b", "c"], path=path, max_features=2)
    _check(fig, path)
    assert len(fig.axes) == k * 2

    series = rng.normal(size=1000)
    series[:30] = np.nan
    series_labels = np.zeros(1000)
    series_labels[400:450] = 1
    _check(plot_series_scores(series, series_labels, 1.5, tmp_path / "s.png"), tmp_path / "s.png")
    assert plt.get_fignums() == open_before  # no figures left open in pyplot


def test_plots_without_path_return_figures():
    rng = np.random.default_rng(1)
    fig = plot_series_scores(np.arange(10.0), np.zeros(10), 5.0)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    fig = plot_score_histograms(rng.normal(size=50), np.zeros(50), 0.0, "discrepancy")
    assert len(fig.axes) == 1
    x = rng.normal(size=(1, 20, 5))
    fig = plot_example_windows(x, x, None, np.zeros((1, 20)), ["one"], 5)  # no student
    assert len(fig.axes) == 3


def test_example_rows_draw_the_window_they_name(tiny_train_cfg):
    """The "normal" example has no anomalous step anywhere (a window anomalous only before the
    scored region was drawn there, with its anomaly band); type rows show a scored anomaly."""
    from maelab.pipeline import build_datamodule, build_module

    cfg = tiny_train_cfg()
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    batch = dict(next(iter(dm.test_dataloader())))
    n = module.mask_last_n
    labels, kinds = batch["point_labels"].clone(), batch["anomaly_type"].clone()
    labels[0], kinds[0] = 0, 3  # first window: a level shift before the scored region only
    labels[0, 10:20] = 1
    batch |= {"point_labels": labels, "anomaly_type": kinds}
    with torch.no_grad():
        module.test_step(batch, 0)
    assert 0 in module.examples and int(module.examples[0]["point_labels"].sum()) == 0
    for kind, example in module.examples.items():
        if kind:
            assert int(example["point_labels"][-n:].sum()) > 0, kind
