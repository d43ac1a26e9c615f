"""SD-MAE scoring options: all_positions inference, label scopes, reductions, combined weight,
score=auto chosen on validation only, and every option through a real `debug=fast` run."""

import json
from dataclasses import asdict

import pytest
import torch

from maelab.data.contracts import SeriesInfo
from maelab.models.sdmae.config import SDMAEConfig
from maelab.models.sdmae.masking import block_masks, last_steps_by_feature_masks
from maelab.models.sdmae.module import SDMAEModule
from maelab.pipeline import evaluate, train
from tests.conftest import compose_cfg

INFO = SeriesInfo(batch_size=4, seq_length=40, num_features=3, feature_names=["a", "b", "c"],
                  anomaly_types=["normal", "spike"], eval_level="window", val_has_labels=True,
                  train_has_labels=True)


def module(strategy: str = "patch", loss: dict | None = None, **scoring) -> SDMAEModule:
    cfg = asdict(SDMAEConfig())
    cfg["loss"] |= loss or {}
    cfg["net"] |= {"d_model": 16, "encoder_depth": 1, "teacher_depth": 1}
    cfg["masking"] |= {"strategy": strategy, "patch_size": 5}
    cfg["scoring"] |= {"mask_last_n": 10, **scoring}
    return SDMAEModule(**cfg, data_info=asdict(INFO)).eval()


@pytest.mark.parametrize("strategy", ["patch", "token", "temporal", "feature_wise", "patch_feature"])
@pytest.mark.parametrize("passes", [1, 2, 4])
def test_block_masks_hide_every_step_once(strategy, passes):
    masks = block_masks(strategy, 2, 40, 3, 10, passes, patch_size=5)
    cells = torch.stack([module(strategy).net(torch.zeros(2, 40, 3), m)["hidden"] for m in masks])
    assert torch.equal(cells.sum(0), torch.ones(2, 40, 3, dtype=cells.dtype))
    counts = cells.flatten(1).sum(1)
    assert bool((counts == counts[0]).all()), "every pass hides as many values"


@pytest.mark.parametrize("strategy", ["patch", "temporal", "feature_wise"])
def test_all_positions_equals_a_loop_over_the_passes(strategy):
    torch.manual_seed(0)
    m = module(strategy, inference="all_positions", passes=2)
    x = torch.randn(3, 40, 3)
    batched, _ = m.step_scores(x)
    loop = {"reconstruction": torch.zeros(3, 40, 3), "discrepancy": torch.zeros(3, 40, 3)}
    for mask in block_masks(strategy, 3, 40, 3, 10, 2, patch_size=5):
        out = m.net(x, mask)
        h = out["hidden"]
        loop["reconstruction"] += torch.where(h, (out["teacher"] - x) ** 2, 0.0)
        loop["discrepancy"] += torch.where(h, (out["teacher"] - out["student"]) ** 2, 0.0)
    for k in loop:
        assert torch.allclose(batched[k], loop[k], atol=1e-5), k


@pytest.mark.parametrize("strategy", ["feature_wise", "patch_feature"])
def test_last_n_by_feature_equals_a_loop_over_the_features(strategy):
    torch.manual_seed(0)
    m = module(strategy, inference="last_n_by_feature")
    x = torch.randn(3, 40, 3)
    batched, out = m.step_scores(x)
    assert batched["reconstruction"].shape == (3, 10, 3)
    assert bool(out["hidden"][:, -10:].all()) and not bool(out["hidden"][:, :-10].any())
    for f, mask in enumerate(last_steps_by_feature_masks(strategy, 3, 40, 3, 10, 5)):
        one = m.net(x, mask)
        assert torch.equal(one["hidden"][:, -10:, f], torch.ones(3, 10, dtype=torch.bool))
        teacher, student = one["teacher"][:, -10:, f], one["student"][:, -10:, f]
        assert torch.allclose(batched["reconstruction"][..., f], (teacher - x[:, -10:, f]) ** 2,
                              atol=1e-5)
        assert torch.allclose(batched["discrepancy"][..., f], (teacher - student) ** 2, atol=1e-5)


def test_patch_feature_hidden_cells_cannot_change_the_output():
    torch.manual_seed(0)
    net = module("patch_feature").net
    x = torch.randn(2, 40, 3)
    mask = last_steps_by_feature_masks("patch_feature", 2, 40, 3, 10, 5)[1]  # feature 1 hidden
    changed = x.clone()
    changed[:, -10:, 1] += 100.0
    a, b = net(x, mask), net(changed, mask)
    assert torch.equal(a["teacher"], b["teacher"]) and torch.equal(a["student"], b["student"])
    changed[:, -10:, 0] += 1.0  # a visible cell of the same patch does change it
    assert not torch.equal(a["teacher"], net(changed, mask)["teacher"])


def test_last_n_scores_the_hidden_last_steps():
    m = module()
    scores, out = m.step_scores(torch.randn(2, 40, 3))
    assert scores["reconstruction"].shape == (2, 10, 3)
    assert bool(out["hidden"][:, -10:].all()) and not bool(out["hidden"][:, :-10].any())


def hand_built() -> dict[str, torch.Tensor]:
    """Four windows of 40 steps (scored region: the last 10): normal; anomaly only in the
    context; anomaly in context and scored region; anomaly only in the scored region."""
    pl = torch.zeros(4, 40, dtype=torch.long)
    pl[1, 5:8] = 1
    pl[2, 25:35] = 1
    pl[3, 33:36] = 1
    cells = torch.arange(4, dtype=torch.float64)[:, None, None].expand(4, 10, 3).clone()
    cells[:, -1, 0] += 100.0  # one large value in every window's last step
    return {"score/reconstruction": cells, "score/discrepancy": cells.clone(), "point_labels": pl,
            "anomaly_type": torch.tensor([0, 1, 1, 1]), "start": torch.arange(4),
            "series": torch.zeros(4, dtype=torch.long)}


@pytest.mark.parametrize("scope, labels", [("scored", [0, 0, 1, 1]), ("window", [0, 1, 1, 1])])
def test_label_scope_on_hand_built_windows(scope, labels):
    lv = module(label_scope=scope).level_scores(hand_built())
    assert lv["labels"].tolist() == labels
    assert lv["groups"]["visible_in_context"].tolist() == [False, False, True, False]
    assert lv["groups"]["hidden_only"].tolist() == [False, False, False, True]
    assert ("context_only" in lv["groups"]) == (scope == "window")


@pytest.mark.parametrize("reduce, first", [("mean", 100 / 30), ("max", 100.0)])
def test_reduce(reduce, first):
    lv = module(reduce=reduce).level_scores(hand_built())
    assert lv["scores"]["reconstruction"][0].item() == pytest.approx(first)


def test_combined_weight_is_chosen_on_validation():
    m = module()
    labels = torch.tensor([0, 0, 0, 1, 1, 0])
    scores = {"discrepancy": torch.tensor([0.1, 0.2, 0.3, 0.9, 0.8, 0.25], dtype=torch.float64),
              "reconstruction": torch.tensor([0.5, 0.1, 0.9, 0.2, 0.3, 0.4], dtype=torch.float64)}
    mean, std = m.normal_stats(scores, labels)
    w = m.fit_combined_weight(scores, labels, mean, std)  # only the discrepancy separates
    combined = m.with_combined(scores, mean, std, w)["combined"]
    assert w > 0 and combined[labels == 1].min() > combined[labels == 0].max()
    swapped = {"discrepancy": scores["reconstruction"], "reconstruction": scores["discrepancy"]}
    mean, std = m.normal_stats(swapped, labels)
    assert m.fit_combined_weight(swapped, labels, mean, std) == 0.0  # reconstruction alone
    assert m.fit_combined_weight(scores, torch.zeros(6, dtype=torch.long), mean, std) == 0.5


def test_score_auto_never_reads_test_data(tiny_train_cfg, tmp_path, monkeypatch):
    """Calibration (which picks the primary score) runs with test loaders that raise, and a test
    set with other labels leaves the choice unchanged."""
    cfg = tiny_train_cfg("score=auto", name="run")
    metrics, objects = train(cfg)
    chosen = metrics["score"]
    mod, dm, trainer = objects["module"], objects["datamodule"], objects["trainer"]

    def no_test(*_):
        raise AssertionError("test data read during calibration")

    monkeypatch.setattr(type(dm), "test_dataloader", no_test)
    mod.cal_signature.fill_(-1)
    mod.calibrate(trainer, dm)
    assert mod.score == chosen
    monkeypatch.undo()
    flipped = dm.dataset("test")
    flipped.point_labels = 1 - flipped.point_labels
    flipped.label = flipped.point_labels.amax(dim=1)
    trainer.test(mod, datamodule=dm, verbose=False)
    assert mod.summary()["score"] == chosen


OPTIONS = [
    "model.net.encoder_input=mask_tokens", "model.net.decoder=cross_attention",
    "model.net.head=shared", "model.loss.gap_region=window", "model.loss.gap_mask=inference",
    "model.loss.detach_teacher=false", "model.loss.push=visible", "model.loss.margin_mode=relative",
    "model.loss.recon_reduction=feature_sum", "eval.label_scope=window",
    "scoring.inference=all_positions", "scoring.reduce=max", "data.generator=design",
    "data.normalise=none", "model.loss.recon_mask=training_and_inference",
    "masking=patch_feature", "masking=patch_feature scoring.inference=last_n_by_feature",
]


@pytest.mark.parametrize("option", OPTIONS)
def test_each_option_trains_with_debug_fast(tiny_train_cfg, option):
    cfg = tiny_train_cfg(*option.split(), name=option.replace("=", "_").replace(" ", "_"))
    metrics, _ = train(cfg)
    assert set(metrics["test"]) == {"discrepancy", "reconstruction", "combined"}
    assert metrics["primary"] == metrics["test"][metrics["score"]]
    on_disk = json.load(open(f"{cfg.paths.output_dir}/metrics.json"))
    key, value = option.split()[-1].rsplit("=", 1)
    if key.startswith(("eval.", "scoring.")):
        assert on_disk[key.split(".")[1]] == value


def test_evaluate_with_other_scoring_recalibrates(tiny_train_cfg):
    metrics, _ = train(tiny_train_cfg(name="run"))
    again = evaluate(compose_cfg("evaluate", [f"ckpt={metrics['checkpoint']}",
                                              "eval.label_scope=window",
                                              "scoring.inference=all_positions"]))
    assert again["label_scope"] == "window" and again["inference"] == "all_positions"
    assert again["test"] != metrics["test"]


@pytest.mark.parametrize("gap_mask", ["inference", "training"])
@pytest.mark.parametrize("inference", ["last_n", "all_positions"])
def test_validation_scores_equal_a_fresh_scoring_pass(inference, gap_mask):
    """Validation reuses the loss's pass with the last n steps hidden (`gap_mask: inference`, the
    default) as the scoring pass of `last_n`; otherwise it scores its own pass. Either way the
    collected scores equal, bit for bit, those of `step_scores` on the same windows."""
    torch.manual_seed(0)
    m = module("patch", {"gap_mask": gap_mask}, inference=inference, passes=2)
    b = 3
    batch = {"x": torch.randn(b, 40, 3), "labelled": torch.ones(b, dtype=torch.bool),
             "label": torch.tensor([0, 1, 0]), "point_labels": torch.zeros(b, 40, dtype=torch.long),
             "anomaly_type": torch.zeros(b, dtype=torch.long), "start": torch.arange(b),
             "series": torch.zeros(b, dtype=torch.long)}
    batch["point_labels"][1, 35:] = 1
    m.on_validation_epoch_start()
    calls, infer = [], m.infer
    m.infer = lambda x: calls.append(1) or infer(x)  # counts the scoring passes run
    with torch.no_grad():
        m.validation_step(batch, 0)
        reused = inference == "last_n" and gap_mask == "inference"
        assert len(calls) == (not reused)
        fresh, _ = m.step_scores(batch["x"])
    for k, v in fresh.items():
        assert torch.equal(m._collected[0][f"score/{k}"], v), k
