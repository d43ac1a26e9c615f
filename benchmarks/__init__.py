"""Benchmarks (`python -m benchmarks`): ratios measured side by side in one run.

Each module exposes `run(...) -> dict` and runs alone with `python -m benchmarks.<name>`;
the suite (`__main__`, `make bench`) runs them all, prints one table and writes `bench.json`:

    sdmae_throughput  SD-MAE training windows/s per masking strategy, Lightning vs plain torch
    sdmae_inference   SD-MAE point scores of a long series, points/s
    mmmae_encoder     MM-MAE encoder step: visible tokens only vs all tokens
    mfu               MM-MAE training step FLOPs / time / peak GEMM rate
    hydro_loader      hydrology windows: prepared store vs compressed NetCDF
    hydro_step        hydrology loader batch vs MM-MAE training step
    memory            peak RSS reading a 1-year vs a 4-year hydrology store
    config_error      CPU seconds from `python train.py <bad setting>` to its message
"""
