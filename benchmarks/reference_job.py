"""One whole job of the design's code (yunkio/anomaly_mae), for `benchmarks/reference.py`.

    <python> benchmarks/reference_job.py <checkout> [--epochs 20] [--train 1000] [--test 300]
                                         [--batch-size 32] --out result.json

Runs the design's patch baseline unchanged: imports `scripts/run_full_experiments.py` from the
checkout at run time (nothing of it is copied here), builds its datasets, model, `Trainer` and
`Evaluator` as its own experiment runner does (default `Config`, patch masking, seed 42, one
intra-op thread), trains, scores the test windows and computes its sequence-level AUROC.
The only addition is timing: the training loader is wrapped so that each batch it hands out is
stamped (the interval between two batches = data + forward + backward + optimiser step), which
changes neither batches nor random draws. Standalone on purpose: the design's Python
environment (torch, numpy, matplotlib, seaborn, pandas, scikit-learn, tqdm) need not hold maelab.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


class StampedLoader:
    """A DataLoader whose iteration stamps every batch handed out: (wall, process CPU) per epoch."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.epochs: list[list[tuple[float, float]]] = []

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        stamps: list[tuple[float, float]] = []
        self.epochs.append(stamps)
        for batch in self.loader:
            stamps.append((time.perf_counter(), time.process_time()))
            yield batch

    def step_seconds(self) -> dict[str, float]:
        """Median interval between successive batches, over every epoch after the first."""
        later = self.epochs[1:] or self.epochs
        wall = [b[0] - a[0] for e in later for a, b in zip(e[:-1], e[1:], strict=True)]
        cpu = [b[1] - a[1] for e in later for a, b in zip(e[:-1], e[1:], strict=True)]
        return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def main() -> None:
    t_start, c_start = time.perf_counter(), time.process_time()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkout", type=Path)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--test", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    script = args.checkout / "scripts" / "run_full_experiments.py"
    if not script.is_file():
        raise SystemExit(f"--reference {args.checkout}: no scripts/run_full_experiments.py there "
                         "(expected a checkout of yunkio/anomaly_mae @942b94e)")
    sys.path.insert(0, str(script.parent))
    phases: dict[str, float] = {}

    def mark(name: str, since: tuple[float, float]) -> tuple[float, float]:
        now = (time.perf_counter(), time.process_time())
        phases[f"{name}_wall"], phases[f"{name}_cpu"] = now[0] - since[0], now[1] - since[1]
        return now

    import run_full_experiments as design  # the design's module, unchanged
    import torch
    from sklearn.metrics import roc_auc_score
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    t = mark("import", (t_start, c_start))
    cfg = design.Config()
    cfg.num_epochs, cfg.batch_size = args.epochs, args.batch_size
    cfg.num_train_samples, cfg.num_test_samples = args.train, args.test
    design.set_seed(cfg.random_seed)
    train = design.MultivariateTimeSeriesDataset(
        args.train, cfg.seq_length, cfg.num_features, cfg.train_anomaly_ratio, True, cfg.random_seed)
    test = design.MultivariateTimeSeriesDataset(
        args.test, cfg.seq_length, cfg.num_features, cfg.test_anomaly_ratio, False,
        cfg.random_seed + 1)
    design.set_seed(cfg.random_seed)
    t = mark("data", t)
    train_loader = StampedLoader(DataLoader(train, batch_size=cfg.batch_size, shuffle=True))
    test_loader = DataLoader(test, batch_size=cfg.batch_size, shuffle=False)
    model = design.SelfDistilledMAEMultivariate(cfg)
    design.Trainer(model, cfg, train_loader, test_loader, verbose=False).train()
    t = mark("train", t)
    scores, labels, _, _ = design.Evaluator(model, cfg, test_loader).compute_anomaly_scores()
    auroc = float(roc_auc_score(labels, scores))
    mark("test", t)
    args.out.write_text(json.dumps({
        "phases": phases, "step": train_loader.step_seconds(), "batch_size": cfg.batch_size,
        "steps_per_epoch": len(train_loader), "epochs": cfg.num_epochs, "auroc": auroc,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
