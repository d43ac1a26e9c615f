import numpy as np

from maelab.data.series.synthetic import ANOMALY_TYPES, generate_windows
from maelab.data.series.synthetic_datamodule import SyntheticAnomalyDataModule


def test_deterministic_by_seed():
    a, b = generate_windows(200, seed=7), generate_windows(200, seed=7)
    c = generate_windows(200, seed=8)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.point_labels, b.point_labels)
    assert not np.array_equal(a.x, c.x)


def test_labels_consistent_and_shares():
    w = generate_windows(4000, anomaly_share=0.25, labelled_share=0.03, focus_last=10, seed=1)
    assert w.x.shape == (4000, 100, 5) and w.x.dtype == np.float32
    assert np.array_equal(w.label, (w.anomaly_type > 0).astype(int)), "window label = injected"
    assert abs(w.label.mean() - 0.25) < 1e-9
    assert abs(w.labelled.mean() - 0.03) < 1e-9 and (w.anomaly_type[w.labelled] > 0).all()
    assert set(np.unique(w.anomaly_type)) == set(range(len(ANOMALY_TYPES)))
    scored = w.point_labels[:, -10:].any(1)
    assert scored.mean() > 0.6 * 0.25, "most anomalies overlap the scored region"
    assert not scored[w.anomaly_type == 0].any()


def test_anomalies_change_the_signal():
    clean = generate_windows(500, anomaly_share=0.0, seed=3)
    dirty = generate_windows(500, anomaly_share=1.0, seed=3)
    inside = dirty.point_labels.astype(bool)
    diff = np.abs(dirty.x - clean.x).max(-1)  # same latent draws up to the injection
    assert diff[inside].mean() > 5 * diff[~inside].mean()


def test_features_are_correlated():
    w = generate_windows(500, anomaly_share=0.0, seed=4)
    c = np.corrcoef(w.x.reshape(-1, 5).T)
    assert c[0, 4] > 0.5 and c[0, 3] > 0.5  # cpu ~ response_time, cpu ~ network


def test_datamodule_splits_and_normalisation():
    dm = SyntheticAnomalyDataModule(n_train=300, n_val=100, n_test=200, train_contamination=0.05,
                                    train_labelled_share=0.03, test_anomaly_share=0.25)
    dm.setup()
    train = dm.datasets["train"]
    assert len(train) == 300 and abs(float(train.x.mean())) < 0.05
    assert int(train.labelled.sum()) == 9 and int(train.label.sum()) == 24
    assert int(dm.datasets["test"].label.sum()) == 50
    batch = next(iter(dm.test_dataloader()))
    assert set(batch) == {"x", "point_labels", "labelled", "label", "anomaly_type", "start",
                          "series"}


def test_design_generator_places_anomalies_as_the_seed_study():
    from maelab.data.series.synthetic import DESIGN_ANOMALY_TYPES, generate_design_windows

    w = generate_design_windows(2000, 100, anomaly_share=0.25, labelled_share=0.05, seed=0)
    assert w.x.shape == (2000, 100, 5) and w.x.min() >= 0 and w.x.max() <= 1
    assert (w.anomaly_type > 0).sum() == 500 and w.labelled.sum() == 100
    assert set(np.unique(w.anomaly_type)) == set(range(len(DESIGN_ANOMALY_TYPES)))
    anomalous = w.point_labels.any(1)
    assert np.array_equal(anomalous, w.anomaly_type > 0)
    assert not w.point_labels[:, :20].any(), "never in the first 20 steps"
    only_last = w.point_labels[:, -10:].any(1) & ~w.point_labels[:, :-10].any(1)
    assert not only_last.any(), "none lies only in the last 10 steps"
    for kind, name in enumerate(DESIGN_ANOMALY_TYPES[1:], start=1):
        spans = w.point_labels[w.anomaly_type == kind].sum(1)
        if name in ("memory_leak", "network_congestion"):  # run to the window's end
            assert w.point_labels[w.anomaly_type == kind, -1].all()
        if name == "spike":
            assert spans.min() >= 3 and spans.max() <= 9


def test_design_generator_through_the_datamodule():
    from maelab.data.series.synthetic_datamodule import SyntheticAnomalyDataModule

    dm = SyntheticAnomalyDataModule(n_train=64, n_val=32, n_test=32, generator="design",
                                    normalise="none", train_contamination=0.0,
                                    train_labelled_share=0.1)
    dm.setup()
    info = dm.info()
    assert info.anomaly_types[1] == "spike" and info.feature_names[0] == "cpu"
    x = dm.dataset("train").x
    assert float(x.min()) >= 0 and float(x.max()) <= 1  # not z-scored
    ds = dm.dataset("train")
    assert bool((ds.labelled == (ds.label > 0)).all()), "every training anomaly labelled"
