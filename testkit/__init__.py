"""Fixtures and peers for the tests and benchmarks: planted data, untrained policies, the
single-process preprocess reference and its feature baselines. Not part of the simpersona package."""
