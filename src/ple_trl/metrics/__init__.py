"""Offline evaluation metrics shipped as local [`evaluate`](https://huggingface.co/docs/evaluate) modules.

Every metric lives in its own folder, `<name>/<name>.py`, which is the layout `evaluate.load` recognises as a local
module. Loading one never reaches the Hugging Face Hub: `evaluate.load` (0.4.x) only goes to the Hub when it is given
a *relative* path with at most one `/` that does not exist on disk (it then reads the path as a Hub id such as
`"bleu"` or `"user/metric"`). [`metric_path`] therefore always returns an absolute path to an existing folder, and
[`load`] refuses unknown names instead of letting `evaluate` fall back to the Hub. For a local folder, `evaluate`
copies the script into its modules cache (`HF_MODULES_CACHE`), imports it and checks that its top-level imports are
installed; none of that needs the network, so `HF_HUB_OFFLINE=1` / `HF_EVALUATE_OFFLINE=1` work.

Available metrics:

- `reward_score`: mean and per-sample reward of (prompt, completion) pairs under a TRL-style reward function or a
  local sequence-classification reward model.
- `win_rate`: pairwise win rate of model A's completions over model B's under a reward or a (position-swapped)
  callable judge.
- `bleu`: corpus BLEU computed with `sacrebleu.corpus_bleu`.
- `perplexity`: perplexity of a local causal language model on texts.

The metric scripts import `evaluate`, `datasets`, `torch`, `transformers`, `accelerate` and, for `bleu`, `sacrebleu`;
`reward_score` and `win_rate` share their reward scoring from `ple_trl.metrics._scoring`, so they need `ple_trl`
installed (which loading them by `metric_path` implies).

Example:

```python
>>> from ple_trl.metrics import load, metric_path
>>> import evaluate
>>> bleu = evaluate.load(metric_path("bleu"))  # or: bleu = load("bleu")
>>> round(bleu.compute(predictions=["the cat sat on the mat"], references=[["the cat sat on the mat"]])["bleu"], 1)
100.0
```
"""

import os
from typing import Any

__all__ = ["METRICS_DIR", "list_metrics", "load", "metric_path"]

METRICS_DIR = os.path.dirname(os.path.abspath(__file__))
"""Absolute path of the folder holding one sub-folder per metric."""


def list_metrics() -> list[str]:
    """Names of the metrics shipped with `ple_trl`, sorted.

    A metric is a sub-folder `<name>` of [`METRICS_DIR`] that holds a script `<name>.py`.

    Returns:
        `list[str]`: e.g. `["bleu", "perplexity", "reward_score", "win_rate"]`.
    """
    return sorted(
        name
        for name in os.listdir(METRICS_DIR)
        if not name.startswith(("_", ".")) and os.path.isfile(os.path.join(METRICS_DIR, name, f"{name}.py"))
    )


def metric_path(name: str) -> str:
    """Absolute path of a metric's folder, to pass to `evaluate.load`.

    Args:
        name (`str`):
            Name of the metric, one of [`list_metrics`] (e.g. `"bleu"`).

    Returns:
        `str`: the absolute path of the folder `<METRICS_DIR>/<name>`, which holds `<name>.py`. Being absolute and
        existing, `evaluate.load` treats it as a local module and never looks it up on the Hub.

    Raises:
        `ValueError`: if `name` is not a shipped metric.

    Example:

    ```python
    >>> import evaluate
    >>> from ple_trl.metrics import metric_path
    >>> reward_score = evaluate.load(metric_path("reward_score"))
    ```
    """
    available = list_metrics()
    if not isinstance(name, str) or name not in available:
        raise ValueError(
            f"`name`={name!r} is not a metric shipped with ple_trl. Use one of {available}; for a Hub metric call "
            "`evaluate.load` directly."
        )
    return os.path.join(METRICS_DIR, name)


def load(name: str, **kwargs: Any):
    """Load a shipped metric with `evaluate.load(metric_path(name), **kwargs)`, offline.

    Args:
        name (`str`):
            Name of the metric, one of [`list_metrics`].
        **kwargs:
            Forwarded to `evaluate.load` (e.g. `keep_in_memory=True`, `cache_dir=...`, `experiment_id=...`).

    Returns:
        `evaluate.EvaluationModule`: the loaded metric; call `.compute(...)` on it.

    Raises:
        `ValueError`: if `name` is not a shipped metric (no Hub fallback).

    Example:

    ```python
    >>> from ple_trl.metrics import load
    >>> win_rate = load("win_rate")
    >>> def length_reward(prompts, completions, **kwargs):
    ...     return [float(len(c.split())) for c in completions]
    >>> win_rate.compute(prompts=["p"], completions_a=["a b"], completions_b=["a"], reward_fn=length_reward)["wins"]
    1
    ```
    """
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)
