"""The benchmark suite runs end to end at smoke sizes and writes well-formed bench.json.

No timing assertions: the figures of a `--quick` run on a shared machine mean nothing.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks.__main__ import SUITE, main
from benchmarks.mfu import build, counted_flops, step_flops
from benchmarks.reference import SKIP


def _finite_positive(x: float) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = torch.get_num_threads()
    try:
        main(["--quick", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    return json.loads(out.read_text())


@pytest.mark.slow  # 30 s or more: `make test-slow` (and CI) runs it
def test_quick_suite_writes_every_benchmark(quick):
    assert set(quick) >= {"machine", "settings", "benchmarks", "targets", "seconds", "started"}
    assert quick["settings"]["quick"] is True
    assert list(quick["benchmarks"]) == list(SUITE)
    assert quick["benchmarks"]["reference"] == {"skipped": SKIP}  # no checkout given
    for name, result in quick["benchmarks"].items():
        if name == "reference":
            continue
        assert "error" not in result, f"{name}: {result.get('error')}"
        assert _finite_positive(result["seconds"])
        assert _finite_positive(result["memory"]["peak_rss_mb"])
    b = quick["benchmarks"]
    judged = {  # each target row is judged on its benchmark's own number
        "sdmae_throughput": b["sdmae_throughput"]["patch"]["overhead_ratio"] <= 1.05,
        "sdmae_inference": b["sdmae_inference"]["vus_pr"]["seconds_per_25k_points"] <= 1.0,
        "sdmae_all_positions": b["sdmae_all_positions"]["ratio_all_positions"] <= 3.0,
        "mmmae_encoder": b["mmmae_encoder"]["speedup"] >= 3,
        "mfu": b["mfu"]["mfu"] >= 0.30,
        "hydro_step": b["hydro_step"]["step_over_loader"] >= 5,
        "memory": b["memory"]["ratios"]["peak_anon_mb"] <= 1.1,
        "config_error": b["config_error"]["cpu_s"] <= 3.0,
    }
    assert [t["benchmark"] for t in quick["targets"]] == list(judged)
    for target in quick["targets"]:
        assert target["met"] is judged[target["benchmark"]], target


@pytest.mark.slow  # 30 s or more: `make test-slow` (and CI) runs it
def test_quick_suite_figures(quick):
    b = quick["benchmarks"]
    patch = b["sdmae_throughput"]["patch"]
    for clock in ("wall", "cpu"):
        assert _finite_positive(patch[clock]["overhead_ratio"])
        assert _finite_positive(patch[clock]["lightning_windows_per_s"])
    inf = b["sdmae_inference"]
    assert inf["scored_points"] == inf["settings"]["length"] - inf["settings"]["seq_length"] + \
        inf["settings"]["mask_last_n"]  # every point after the first window's context, once
    assert inf["vus_pr"]["points"] == inf["scored_points"] and _finite_positive(inf["vus_pr"]["seconds"])
    allpos = b["sdmae_all_positions"]
    assert allpos["blocks"] >= allpos["passes"] > 1
    assert all(_finite_positive(v) for v in allpos["median_seconds"].values())
    enc = b["mmmae_encoder"]
    assert enc["visible_only"]["tokens"] < enc["all_tokens"]["tokens"]
    assert _finite_positive(b["mfu"]["mfu"]) and b["mfu"]["counted_vs_analytic"] == pytest.approx(1)
    assert _finite_positive(b["hydro_loader"]["speedup"])
    assert _finite_positive(b["hydro_step"]["step_over_loader"])
    profile = b["phases"]["profile"]  # a tiny train.py run: its phases add up to its wall time
    assert profile[-1]["phase"] == "total" and profile[-1]["wall"] == pytest.approx(b["phases"]["wall"])
    assert sum(r["wall"] for r in profile[:-1]) == pytest.approx(profile[-1]["wall"])
    assert {"start-up", "import", "data", "fit · training", "fit · validation", "calibration",
            "test", "figures", "exit"} <= {r["phase"] for r in profile}
    assert all(r["wall"] >= 0 for r in profile if r["phase"] not in ("other", "fit · other"))
    mem = b["memory"]
    for y in mem["settings"]["years"]:
        assert _finite_positive(mem[f"{y}y"]["read"]["peak_anon_mb"])
        assert mem[f"{y}y"]["read"]["windows"] >= mem["settings"]["windows"]
    assert mem["ratios"]["store_mb"] > 1.5  # the larger archive really is larger
    err = b["config_error"]
    assert _finite_positive(err["cpu_s"]) and _finite_positive(err["import_pipeline_cpu_s"])


def test_analytic_flops_match_the_counter():
    """The shape-based count equals FlopCounterMode's (plus the attention recomputation)."""
    model, step = build(d_model=32, depth=1, heads=2, batch_size=1, ratio=0.75, seed=0,
                        device=torch.device("cpu"), temporal_patch=30)
    flops = step_flops(model, 1, 0.75, n_static=8)
    assert counted_flops(step) == flops["model"] + flops["recompute"]
