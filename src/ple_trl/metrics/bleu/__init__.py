"""The `bleu` metric, an `evaluate` module: `evaluate.load(ple_trl.metrics.metric_path("bleu"))`.

This file only makes the folder a regular package, so that setuptools ships the script with `packages = find:`.
It does not import the script, which `evaluate` loads on its own.
"""
