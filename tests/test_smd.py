"""SMD loading (both layouts, checks) and the long-series window DataModule."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from maelab.core.errors import ConfigError, DataError
from maelab.data.series.long_series import SMDDataModule, scoring_starts, sliding_starts
from maelab.data.series.smd import detect_layout, list_machines, load_smd, load_smd_machines
from maelab.pipeline import train
from tests.conftest import compose_cfg

PROJECT = Path(__file__).resolve().parents[1]
SMD = PROJECT.parent / "shared" / "data" / "smd"
needs_smd = pytest.mark.skipif(not SMD.is_dir(), reason="shared SMD data not available")


def _synthetic(seed: int, t_train: int = 400, t_test: int = 450, f: int = 6) -> dict:
    rng = np.random.default_rng(seed)
    train = rng.random((t_train, f)).astype(np.float32)
    test = rng.random((t_test, f)).astype(np.float32)
    labels = (rng.random(t_test) < 0.05).astype(np.uint8)
    return {"train": train, "test": test, "test_label": labels}


def write_npy(root: Path, machines: dict[str, dict]) -> Path:
    """Write machines in the `.npy` layout: <root>/<name>_<split>.npy."""
    root.mkdir(parents=True, exist_ok=True)
    for name, arrays in machines.items():
        for split, arr in arrays.items():
            np.save(root / f"{name}_{split}.npy", arr)
    return root


def write_txt(root: Path, machines: dict[str, dict]) -> Path:
    """Write machines in the OmniAnomaly text layout: <root>/<split>/<name>.txt."""
    for name, arrays in machines.items():
        for split, arr in arrays.items():
            (root / split).mkdir(parents=True, exist_ok=True)
            fmt = "%d" if split.endswith("_label") else "%.9g"  # %.9g round-trips float32
            np.savetxt(root / split / f"{name}.txt", arr, fmt=fmt, delimiter=",")
    return root


@pytest.fixture
def three(tmp_path: Path) -> Path:
    """A `.npy` root with three synthetic machines."""
    names = ["machine-1-2", "machine-1-10", "machine-2-1"]
    return write_npy(tmp_path / "npy", {n: _synthetic(k) for k, n in enumerate(names)})


def _source_slice() -> dict:
    """A slice of real machine-1-2 (constant columns included) or synthetic arrays."""
    if not SMD.is_dir():
        arrays = _synthetic(0)
        arrays["train"][:, 2] = 0.5  # one constant column
        return arrays
    return {
        split: np.load(SMD / f"machine-1-2_{split}.npy")[:300]
        for split in ("train", "test", "test_label")
    }


# --- loading -----------------------------------------------------------------------------
def test_both_layouts_load_identical_arrays(tmp_path: Path) -> None:
    arrays = _source_slice()
    npy = write_npy(tmp_path / "npy", {"machine-1-2": arrays})
    txt = write_txt(tmp_path / "txt", {"machine-1-2": arrays})
    assert (detect_layout(npy), detect_layout(txt)) == ("npy", "txt")
    with pytest.warns(UserWarning, match="constant on train"):
        a = load_smd(npy, "machine-1-2")
    with pytest.warns(UserWarning, match="constant on train"):
        b = load_smd(txt, "1-2")
    for field in ("train", "test", "test_labels", "features"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.train.dtype == b.train.dtype == np.float32
    assert a.test_labels.dtype == np.int64
    assert b.paths["test_label"] == txt / "test_label" / "machine-1-2.txt"


@needs_smd
def test_real_machine_loads() -> None:
    assert list_machines(SMD) == [f"machine-1-{i}" for i in range(2, 9)] + [
        "machine-2-1", "machine-2-2", "machine-2-3"
    ]
    with pytest.warns(UserWarning, match=r"\[7, 26, 28, 36, 37\]"):
        m = load_smd(SMD, "1-2")
    assert m.train.shape == (23694, 33) and m.test.shape == (23694, 33)
    assert m.test_labels.shape == (23694,) and set(np.unique(m.test_labels)) == {0, 1}
    assert 7 not in m.features and len(m.features) == 33


def test_machine_selection(three: Path) -> None:
    assert list_machines(three) == ["machine-1-2", "machine-1-10", "machine-2-1"]
    assert [m.name for m in load_smd_machines(three, "1-2")] == ["machine-1-2"]
    assert [m.name for m in load_smd_machines(three, "machine-1-2")] == ["machine-1-2"]
    picked = load_smd_machines(three, ["2-1", "machine-1-2"])
    assert [m.name for m in picked] == ["machine-2-1", "machine-1-2"]
    assert len(load_smd_machines(three, "all")) == 3


def test_missing_root_machine_and_file(three: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.root"):
        load_smd(tmp_path / "nowhere", "1-2")
    with pytest.raises(ConfigError, match="data.machine") as err:
        load_smd(three, "machine-3-3")
    assert "machine-1-10" in str(err.value) and "machine-2-1" in str(err.value)
    (three / "machine-2-1_test.npy").unlink()
    with pytest.raises(DataError, match="machine-2-1_test.npy"):
        load_smd_machines(three, "all")


def test_nan_names_file_column_and_row(tmp_path: Path) -> None:
    arrays = _synthetic(1)
    arrays["test"][17, 4] = np.nan
    arrays["test"][30, 1] = np.nan
    root = write_txt(tmp_path / "txt", {"machine-1-1": arrays})
    with pytest.raises(DataError, match=r"test/machine-1-1.txt.*column 4, first at row 17"):
        load_smd(root, "1-1")


def test_constant_columns_warn_and_are_dropped(tmp_path: Path) -> None:
    a, b = _synthetic(1), _synthetic(2)
    a["train"][:, 1] = 0.3
    b["train"][:, 4] = 0.0
    root = write_npy(tmp_path / "npy", {"machine-1-1": a, "machine-1-2": b})
    with pytest.warns(UserWarning) as record:
        machines = load_smd_machines(root, "all")
    text = " ".join(str(w.message) for w in record)
    assert "machine-1-1: columns [1]" in text and "machine-1-2: columns [4]" in text
    for m, src in zip(machines, (a, b), strict=True):
        np.testing.assert_array_equal(m.features, [0, 2, 3, 5])
        np.testing.assert_array_equal(m.test, src["test"][:, [0, 2, 3, 5]])


def test_label_length_mismatch(tmp_path: Path) -> None:
    arrays = _synthetic(3)
    arrays["test_label"] = arrays["test_label"][:-5]
    root = write_npy(tmp_path / "npy", {"machine-1-1": arrays})
    with pytest.raises(DataError, match=r"machine-1-1_test_label.npy: 445 labels.*450 rows"):
        load_smd(root, "1-1")


# --- windows -----------------------------------------------------------------------------
@pytest.mark.parametrize(("length", "seq", "n"), [(100, 20, 5), (103, 20, 5), (57, 10, 7)])
def test_scoring_windows_cover_each_point_once(length: int, seq: int, n: int) -> None:
    starts = scoring_starts(length, seq, n)
    counts = np.zeros(length, dtype=int)
    for s in starts:
        counts[s + seq - n : s + seq] += 1
    assert starts[0] < n and starts[-1] + seq == length
    assert (np.diff(starts) == n).all()
    assert (counts[starts[0] + seq - n :] == 1).all() and (counts[: starts[0] + seq - n] == 0).all()
    np.testing.assert_array_equal(sliding_starts(25, 10, 4), [0, 4, 8, 12])


def _dm(root: Path, **kw) -> SMDDataModule:
    args = dict(root=str(root), machine="all", seq_length=20, train_stride=3, val_fraction=0.2,
                mask_last_n=7, batch_size=16)
    return SMDDataModule(**(args | kw))


def test_datamodule_batches_and_interface(three: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = _dm(three)
    with caplog.at_level(logging.INFO, logger="maelab.data.series.long_series"):
        dm.setup("fit")
    assert "unlabelled mode" in caplog.text
    assert dm.num_features == 6 and dm.feature_names[0] == "feature_0"
    assert dm.anomaly_types == ["normal", "anomaly"] and dm.eval_level == "point"
    assert not dm.train_has_labels and not dm.val_has_labels
    assert dm.series_names == {0: "machine-1-2", 1: "machine-1-10", 2: "machine-2-1"}
    assert dm.series_lengths == {0: 450, 1: 450, 2: 450}
    train = next(iter(dm.train_dataloader()))
    assert train["x"].shape == (16, 20, 6) and train["x"].dtype == torch.float32
    assert train["point_labels"].shape == (16, 20) and train["point_labels"].dtype == torch.int64
    assert not train["labelled"].any() and (train["anomaly_type"] == -1).all()
    for key in ("label", "anomaly_type", "start", "series"):
        assert train[key].dtype == torch.int64 and train[key].shape == (16,)
    test = next(iter(dm.test_dataloader()))
    assert test["labelled"].all() and test["labelled"].dtype == torch.bool
    scored = test["point_labels"][:, -7:].amax(dim=1)
    torch.testing.assert_close(test["label"], scored)
    torch.testing.assert_close(test["anomaly_type"], scored)
    assert len(dm.val_dataloader().dataset) == 3 * len(scoring_starts(80, 20, 7))
    assert len(dm.train_dataloader().dataset) == 3 * len(sliding_starts(320, 20, 3))


def test_test_windows_exact_cover_and_no_straddle(three: Path) -> None:
    dm = _dm(three)
    machines = load_smd_machines(three, "all")
    seen = {sid: np.zeros(450, dtype=int) for sid in range(3)}
    for batch in dm.test_dataloader():
        for x, labels, start, sid in zip(
            batch["x"], batch["point_labels"], batch["start"], batch["series"], strict=True
        ):
            sid, start = int(sid), int(start)
            m = machines[sid]
            loc, scale = dm.norm_stats[sid]
            expected = (m.test[start : start + 20] - loc) / scale  # window from its own series
            np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(labels.numpy(), m.test_labels[start : start + 20])
            seen[sid][start + 13 : start + 20] += 1
    first = scoring_starts(450, 20, 7)[0]
    for counts in seen.values():
        assert (counts[first + 20 :] == 1).all() and counts.max() == 1
        assert counts[-1] == 1  # the series end is scored


def test_normalisation_uses_train_statistics_only(three: Path) -> None:
    dm = _dm(three, normalization="zscore", clip=None)
    dm.setup()
    train = load_smd(three, "1-2").train[:320]  # train minus the 20 % validation tail
    np.testing.assert_allclose(dm.norm_stats[0][0], train.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(dm.norm_stats[0][1], train.std(axis=0), rtol=1e-5)
    before = {k: (loc.copy(), scale.copy()) for k, (loc, scale) in dm.norm_stats.items()}
    x_before = next(iter(dm.test_dataloader()))["x"]
    test = np.load(three / "machine-1-2_test.npy")
    np.save(three / "machine-1-2_test.npy", test * 10 + 3)
    dm2 = _dm(three, normalization="zscore", clip=None)
    dm2.setup()
    for k, (loc, scale) in before.items():
        np.testing.assert_array_equal(dm2.norm_stats[k][0], loc)
        np.testing.assert_array_equal(dm2.norm_stats[k][1], scale)
    assert not torch.allclose(next(iter(dm2.test_dataloader()))["x"], x_before)
    mm = _dm(three, normalization="minmax", clip=None)
    mm.setup()
    assert float(mm.norm_stats[0][0].min()) >= 0 and "norm_loc" in mm.state_dict()


def test_labelled_slice_validation(three: Path, tmp_path: Path) -> None:
    src = _synthetic(7, t_test=60)
    path = tmp_path / "slice.npz"
    np.savez(path, x=src["test"], labels=src["test_label"], series="machine-2-1")
    dm = _dm(three, labelled_slice=str(path))
    assert dm.val_has_labels
    val = next(iter(dm.val_dataloader()))
    assert val["labelled"].all() and (val["series"] == 2).all()
    assert len(dm.val_dataloader().dataset) == len(scoring_starts(60, 20, 7))
    assert len(dm.train_dataloader().dataset) == 3 * len(sliding_starts(400, 20, 3))


def _with_train_labels(seed: int) -> dict:
    arrays = _synthetic(seed)
    labels = np.zeros(400, dtype=np.uint8)
    labels[[50, 51, 52, 200, 390]] = 1  # 390 lies in the validation tail (rows 320-399)
    return arrays | {"train_label": labels}


def test_training_labels_both_layouts(tmp_path: Path) -> None:
    arrays = _with_train_labels(4)
    npy = write_npy(tmp_path / "npy", {"machine-1-1": arrays})
    txt = write_txt(tmp_path / "txt", {"machine-1-1": arrays})
    a, b = (load_smd_machines(root, "1-1", train_labels=True)[0] for root in (npy, txt))
    np.testing.assert_array_equal(a.train_labels, arrays["train_label"])
    np.testing.assert_array_equal(b.train_labels, arrays["train_label"])
    assert b.paths["train_label"] == txt / "train_label" / "machine-1-1.txt"
    assert load_smd_machines(npy, "1-1")[0].train_labels is None  # not read unless asked


def test_training_labels_reach_train_and_val_windows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    arrays = _with_train_labels(5)
    root = write_npy(tmp_path / "npy", {"machine-1-1": arrays})
    dm = _dm(root, machine="1-1", train_labels=True)
    with caplog.at_level(logging.INFO, logger="maelab.data.series.long_series"):
        dm.setup("fit")
    assert "training labels read (data.train_labels=true)" in caplog.text
    assert dm.train_has_labels and dm.val_has_labels
    train = dm.train_dataloader().dataset
    batch = train.__getitems__(list(range(len(train))))
    assert batch["labelled"].all()
    # a training window is anomalous when any of its 20 steps is
    expected = [arrays["train_label"][s : s + 20].any() for s in sliding_starts(320, 20, 3)]
    np.testing.assert_array_equal(batch["label"].numpy(), expected)
    np.testing.assert_array_equal(batch["anomaly_type"].numpy(), expected)
    assert 0 < batch["label"].sum() < len(expected)
    val = dm.val_dataloader().dataset
    vb = val.__getitems__(list(range(len(val))))
    assert vb["labelled"].all()
    tail = arrays["train_label"][320:]  # the validation tail of train
    expected = np.stack([tail[s : s + 20] for s in scoring_starts(80, 20, 7)])
    np.testing.assert_array_equal(vb["point_labels"].numpy(), expected)
    torch.testing.assert_close(vb["label"], vb["point_labels"][:, -7:].amax(dim=1))


def test_training_labels_bad_input(tmp_path: Path) -> None:
    arrays = _with_train_labels(6)
    root = write_npy(tmp_path / "npy", {"machine-1-1": _synthetic(6)})
    with pytest.raises(DataError, match="machine-1-1_train_label.npy"):
        _dm(root, machine="1-1", train_labels=True).setup()
    short = write_npy(tmp_path / "short", {"machine-1-1": arrays | {"train_label": np.zeros(9)}})
    with pytest.raises(DataError, match=r"machine-1-1_train_label.npy: 9 labels.*400 rows"):
        _dm(short, machine="1-1", train_labels=True).setup()
    twos = write_npy(tmp_path / "twos", {"machine-1-1": arrays | {"train_label": np.full(400, 2)}})
    with pytest.raises(DataError, match=r"train_label.npy: labels must be 0 or 1, found \[2\]"):
        _dm(twos, machine="1-1", train_labels=True).setup()
    with pytest.raises(ConfigError, match="data.train_labels"):
        _dm(root, machine="1-1", train_labels="yes")


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        ({"mask_last_n": 20}, "data.mask_last_n"),
        ({"normalization": "robust"}, "data.normalization"),
        ({"val_fraction": 0.0}, "data.val_fraction"),
        ({"train_stride": 0}, "data.train_stride"),
    ],
)
def test_bad_config_values(three: Path, kw: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        _dm(three, **kw)


def test_val_split_too_short(three: Path) -> None:
    with pytest.raises(ConfigError, match="data.val_fraction"):
        _dm(three, val_fraction=0.01).setup()


@needs_smd
def test_conf_smd_yaml_instantiates_on_real_data() -> None:
    cfg = OmegaConf.load(PROJECT / "conf" / "data" / "smd.yaml")
    cfg.root, cfg.mask_last_n = str(SMD), 10
    dm = instantiate(cfg, machine=["1-2", "2-1"])
    with pytest.warns(UserWarning, match="constant on train"):
        dm.setup("fit")
    assert dm.num_features == 33 and dm.series_names == {0: "machine-1-2", 1: "machine-2-1"}
    batch = next(iter(dm.test_dataloader()))
    assert batch["x"].shape == (64, 100, 33) and batch["x"].abs().max() <= 10
    last = dm.test_dataloader().dataset
    assert int(last.starts[-1]) + 100 == dm.series_lengths[1]


def test_training_labels_switch_on_the_anomaly_term(tmp_path: Path) -> None:
    """`experiment=smd data.train_labels=true` trains with the margin term; without, it is 0."""
    rng = np.random.default_rng(0)
    base = np.sin(np.arange(600)[:, None] / 7 + np.arange(5)) + 0.05 * rng.standard_normal((600, 5))
    labels = np.zeros(600, dtype=np.uint8)
    labels[[100, 101, 300, 301, 302]] = 1
    train_x = base + 6.0 * labels[:, None]
    write_npy(tmp_path / "data", {"machine-1-1": {"train": train_x.astype(np.float32),
                                                  "test": base.astype(np.float32),
                                                  "test_label": labels, "train_label": labels}})
    anomaly_term = {}
    for flag in ("true", "false"):
        cfg = compose_cfg("train", [
            "experiment=smd", f"data.root={tmp_path / 'data'}", "data.machine=1-1",
            f"data.train_labels={flag}", "debug=fast", "logger=csv", "callbacks.progress_bar=null",
            "data.seq_length=20", "patch_size=5", "mask_last_n=5", "data.train_stride=1",
            "data.batch_size=256", "model.net.d_model=32", "model.net.encoder_depth=1",
            "model.net.teacher_depth=2",
        ], tmp_path / flag)
        train(cfg)
        log = pd.read_csv(next((tmp_path / flag).rglob("metrics.csv")))
        anomaly_term[flag] = log["train/disc_anomaly"].dropna().to_numpy()
    assert len(anomaly_term["true"]) and (anomaly_term["true"] > 0).all()
    np.testing.assert_array_equal(anomaly_term["false"], 0.0)


def test_point_level_mahalanobis_whitens_each_step(tmp_path: Path) -> None:
    """`scoring.reduce=mahalanobis` at point level: each step's residuals (F values) against the
    validation steps'; the calibration holds an F × F whitening, and evaluate.py reproduces."""
    from maelab.pipeline import evaluate

    root = write_npy(tmp_path / "data", {"machine-1-1": _synthetic(0)})
    cfg = compose_cfg("train", [
        "experiment=smd", f"data.root={root}", "data.machine=1-1", "debug=fast", "logger=csv",
        "callbacks.progress_bar=null", "data.seq_length=20", "patch_size=5", "mask_last_n=5",
        "data.batch_size=64", "model.net.d_model=32", "model.net.encoder_depth=1",
        "model.net.teacher_depth=2", "scoring.reduce=mahalanobis",
    ], tmp_path / "run")
    metrics, _ = train(cfg)
    state = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert state["cal_resid_precision"].shape == (2, 6, 6)
    again = evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}"]))
    assert metrics["level"] == "point" and again["reduce"] == "mahalanobis"
    for key in ("auroc", "vus_pr"):
        assert again["primary"][key] == pytest.approx(metrics["primary"][key], abs=1e-9)
