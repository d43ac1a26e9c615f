"""maelab beside the design's code (yunkio/anomaly_mae @942b94e): whole jobs, alternated.

The design's code is read from a checkout given on the command line (`--reference <dir>`; the
project never downloads it) and run by `benchmarks/reference_job.py` with `--reference-python`
(an interpreter that has its requirements: torch, numpy, matplotlib, seaborn, pandas,
scikit-learn, tqdm; default: this one). Without a checkout the row is skipped.

Per round, in alternating order (A B, B A, ...), one whole process of each, at the same
settings (20 epochs, 1,000 training windows, 300 test windows, batch 32, one intra-op thread):

    maelab   python train.py data.n_train=1000 data.n_val=300 data.n_test=300
                              data.batch_size=32 trainer.max_epochs=20
             (training, a validation pass per epoch, calibration, test, figures)
    design   its patch baseline: data, training, scoring of the test windows, AUROC

plus, for the steady state at maelab's own default batch (64), a short maelab job (3 epochs at
`data.batch_size=64`). Reported: the median wall-clock time of each whole job (measured here;
CPU time from the kernel's accounting beside it) and their ratio; the steady-state training rate
of each, windows/s from the median interval between successive training batches (data +
forward + backward + optimiser step) over the epochs after the first, by process CPU time
(the clock that leaves out other jobs holding the core on a shared machine; wall beside it).
Targets (issue 19): maelab ≥ 2× faster end to end, ≥ 2.5× in steady-state windows/s.

    python -m benchmarks.reference --reference ../ref --reference-python ../refvenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, log_tail, run_process, single_thread_env
from benchmarks.phases import profile, run_train

SKIP = ("skipped: pass --reference <checkout of yunkio/anomaly_mae @942b94e> "
        "(and --reference-python <its interpreter>)")


def maelab_overrides(n_train: int, n_val: int, n_test: int, batch_size: int, epochs: int
                     ) -> list[str]:
    return [f"data.n_train={n_train}", f"data.n_val={n_val}", f"data.n_test={n_test}",
            f"data.batch_size={batch_size}", f"trainer.max_epochs={epochs}"]


def maelab_steps(timings: dict[str, Any]) -> dict[str, float]:
    """Median training step (s) over the epochs after the first, from a run's timings.json."""
    train = [r for r in timings["records"] if r["phase"] == "train" and r["step_cpu"] is not None]
    later = train[1:] or train
    return {"wall": statistics.median(r["step_wall"] for r in later),
            "cpu": statistics.median(r["step_cpu"] for r in later)}


def run_design(checkout: Path, python: str, out: Path, epochs: int, n_train: int, n_test: int,
               batch_size: int) -> dict[str, Any]:
    """One whole job of the design's code; its result plus wall and CPU seconds."""
    cmd = [python, str(ROOT / "benchmarks" / "reference_job.py"), str(checkout), "--epochs",
           str(epochs), "--train", str(n_train), "--test", str(n_test), "--batch-size",
           str(batch_size), "--out", str(out / "result.json")]
    job = run_process(cmd, out / "job.log", single_thread_env())
    if job["returncode"]:
        tail = log_tail(out / "job.log")
        hint = (" (the design's code needs torch, numpy, matplotlib, seaborn, pandas, "
                "scikit-learn and tqdm: pass --reference-python <an interpreter with them>)"
                if "ModuleNotFoundError" in tail else "")
        raise RuntimeError(f"design job failed ({job['returncode']}): {tail}{hint}")
    return {**job, **json.loads((out / "result.json").read_text())}


def run(reference: str | None = None, reference_python: str | None = None, runs: int = 3,
        epochs: int = 20, n_train: int = 1000, n_val: int = 300, n_test: int = 300,
        batch_size: int = 32, default_batch_size: int = 64, default_batch_epochs: int = 3
        ) -> dict[str, Any]:
    """Alternate whole jobs of maelab and the design's code; times, rates and ratios."""
    if not reference:
        return {"skipped": SKIP}
    checkout = Path(reference).expanduser().resolve()
    python = reference_python or sys.executable
    e2e = maelab_overrides(n_train, n_val, n_test, batch_size, epochs)
    steady = maelab_overrides(n_train, n_val, n_test, default_batch_size, default_batch_epochs)
    jobs: dict[str, list[dict[str, Any]]] = {"maelab": [], "design": [], "maelab_default_batch": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(runs):
            order = ["maelab", "design", "maelab_default_batch"]
            for name in order if r % 2 == 0 else order[::-1]:
                out = Path(tmp) / f"{name}_{r}"
                if name == "design":
                    job = run_design(checkout, python, out, epochs, n_train, n_test, batch_size)
                else:
                    job = run_train(e2e if name == "maelab" else steady, out, single_thread_env())
                    job["step"] = maelab_steps(job["timings"])
                    job["auroc"] = job["metrics"]["primary"]["auroc"]
                    job["profile"] = profile(job)
                    job.pop("timings")
                jobs[name].append(job)

    def med(name: str, *keys: str) -> float:
        values = []
        for job in jobs[name]:
            v = job
            for k in keys:
                v = v[k]
            values.append(v)
        return statistics.median(values)

    out: dict[str, Any] = {"settings": {
        "reference": str(checkout), "reference_python": python, "runs": runs, "epochs": epochs,
        "n_train": n_train, "n_val": n_val, "n_test": n_test, "batch_size": batch_size,
        "default_batch_size": default_batch_size, "default_batch_epochs": default_batch_epochs,
        "maelab_command": "python train.py " + " ".join(e2e), "threads": 1}}
    for clock in ("wall", "cpu"):
        m, d = med("maelab", clock), med("design", clock)
        out[f"end_to_end_{clock}"] = {"maelab_s": m, "design_s": d, "speedup": d / m}
        rate = {name: (default_batch_size if name == "maelab_default_batch" else batch_size)
                / med(name, "step", clock) for name in jobs}
        out[f"steady_{clock}"] = {
            "maelab_windows_per_s": rate["maelab"], "design_windows_per_s": rate["design"],
            "maelab_default_batch_windows_per_s": rate["maelab_default_batch"],
            "speedup_same_batch": rate["maelab"] / rate["design"],
            "speedup_default_batches": rate["maelab_default_batch"] / rate["design"]}
    out["end_to_end_speedup"] = out["end_to_end_wall"]["speedup"]
    out["steady_speedup"] = out["steady_cpu"]["speedup_same_batch"]
    out["auroc"] = {"maelab": [j["auroc"] for j in jobs["maelab"]],
                    "design": [j["auroc"] for j in jobs["design"]]}
    out["design_phases"] = {k: statistics.median(j["phases"][k] for j in jobs["design"])
                            for k in jobs["design"][0]["phases"]}
    out["maelab_profile"] = median_profile([j["profile"] for j in jobs["maelab"]])
    out["jobs"] = jobs
    return out


def median_profile(profiles: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per phase, the median wall and CPU seconds over runs (details of the first run)."""
    return [{**rows[0], "wall": statistics.median(r["wall"] for r in rows),
             "cpu": statistics.median(r["cpu"] for r in rows)}
            for rows in zip(*profiles, strict=True)]


def format_table(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return r["skipped"]
    s, e, st = r["settings"], r["end_to_end_wall"], r["steady_cpu"]
    ec, sw = r["end_to_end_cpu"], r["steady_wall"]
    return "\n".join([
        f"{s['runs']} alternated runs each, {s['epochs']} epochs, {s['n_train']} training / "
        f"{s['n_test']} test windows, batch {s['batch_size']}, 1 thread",
        f"end to end (median wall): maelab {e['maelab_s']:.1f} s, design {e['design_s']:.1f} s: "
        f"{e['speedup']:.2f}x faster (CPU time {ec['maelab_s']:.1f} vs {ec['design_s']:.1f} s: "
        f"{ec['speedup']:.2f}x)",
        f"steady state (CPU time): maelab {st['maelab_windows_per_s']:.0f} windows/s at batch "
        f"{s['batch_size']} ({st['maelab_default_batch_windows_per_s']:.0f} at its default "
        f"{s['default_batch_size']}), design {st['design_windows_per_s']:.0f} at batch "
        f"{s['batch_size']}: {st['speedup_same_batch']:.2f}x (same batch), "
        f"{st['speedup_default_batches']:.2f}x (each default); wall clock "
        f"{sw['speedup_same_batch']:.2f}x / {sw['speedup_default_batches']:.2f}x",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reference",
                                description=__doc__.split("\n")[0])
    p.add_argument("--reference", help="checkout of yunkio/anomaly_mae @942b94e")
    p.add_argument("--reference-python", help="interpreter with the design's requirements")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", type=Path, help="write the results as JSON")
    args = p.parse_args(argv)
    result = run(args.reference, args.reference_python, args.runs, args.epochs)
    print(format_table(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str))
    return result


if __name__ == "__main__":
    main()
