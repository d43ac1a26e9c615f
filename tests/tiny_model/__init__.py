"""A tiny model defined outside `src/` (a forecaster of the last steps of a window), proof that a
new model needs only its package and its config file (`conf/model/tiny.yaml`)."""
