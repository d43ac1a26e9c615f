"""Run reports: console tables, multirun aggregation (`python -m maelab.report <dir>`), Hydra callbacks."""
