"""The curves of a PLE run, from its `trainer_state.json`: `ple-trl plot RUN_DIR`, or [`plot_curves`] in Python.

One figure with three panels over the optimizer steps: the mean reward of the plain and of the principle-guided answers
(`ple/reward_plain`, `ple/reward_principled`); the mean reward gap between them (`ple/reward_gap`) against the
threshold `ple/tau`, the two quantities that route a pair (ranking loss when its gap exceeds tau, weighted SFT
otherwise); and the fraction of pairs trained with the ranking loss (`ple/rank_fraction`). Per-round values are drawn
thin, their moving average thick. matplotlib is imported only when a figure is drawn, and no pyplot state is used.

```bash
ple-trl plot ple-demo                  # writes ple-demo/ple_curves.png, titled "ple-demo"
ple-trl plot ple-demo/checkpoint-30 --out curves.png
```

```python
trainer.save_state()                   # writes output_dir/trainer_state.json (needed with save_strategy="no")
from ple_trl.plotting import plot_curves
plot_curves(trainer.args.output_dir)   # a matplotlib Figure: displayed by a notebook, or .savefig(...)
```
"""

import argparse
import functools
import io
import json
import math
import os
import re
from pathlib import Path

CURVE_KEYS = ("ple/reward_plain", "ple/reward_principled", "ple/reward_gap", "ple/tau", "ple/rank_fraction")
DEFAULT_FIGURE_NAME = "ple_curves.png"


def _find_state(run_dir) -> Path:
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    state = run_dir / "trainer_state.json"
    if state.is_file():
        return state
    checkpoints = sorted(
        run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1])
    )
    if checkpoints:
        return checkpoints[-1]
    raise FileNotFoundError(
        f"`run_dir={str(run_dir)!r}` has no `trainer_state.json` (nor a `checkpoint-*/trainer_state.json`). Pass the "
        "`output_dir` of a finished run, a checkpoint folder, or the path of a `trainer_state.json`; a run writes it "
        "on each checkpoint save. A run with `save_strategy=\"no\"` writes none: call `trainer.save_state()` after "
        "`trainer.train()` (it writes `output_dir/trainer_state.json`)."
    )


def load_curves(run_dir) -> dict[str, tuple[list[float], list[float]]]:
    """
    The PLE curves of a run: for each of `ple/reward_plain`, `ple/reward_principled`, `ple/reward_gap`, `ple/tau` and
    `ple/rank_fraction`, the steps and values logged in `log_history`.

    Args:
        run_dir (`str` or `os.PathLike`):
            A run's `output_dir`, a checkpoint folder, or a `trainer_state.json` file. A folder without one falls back
            to its last `checkpoint-*`.

    Returns:
        `dict[str, tuple[list[float], list[float]]]`: `(steps, values)` per key; NaN values are dropped.

    Raises:
        `FileNotFoundError`: no `trainer_state.json` was found.
        `ValueError`: the file is not a `trainer_state.json` (not JSON, or no `log_history`), or the state has no PLE
            metric (not a PLE run, or `logging_steps` larger than the run).
    """
    state_path = _find_state(run_dir)
    try:
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"`{state_path}` is not a `trainer_state.json`: it is not JSON ({error}). Pass a run's `output_dir`, a "
            "checkpoint folder, or the `trainer_state.json` file that a run writes on each checkpoint save."
        ) from None
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise ValueError(
            f"`{state_path}` is JSON but not a `trainer_state.json`: it has no `log_history` list. Pass a run's "
            "`output_dir`, a checkpoint folder, or the `trainer_state.json` file that a run writes on each checkpoint "
            "save."
        )
    history = state["log_history"]
    curves = {key: ([], []) for key in CURVE_KEYS}
    for entry in history:
        for key in CURVE_KEYS:
            value = entry.get(key)
            if isinstance(value, (int, float)) and not math.isnan(value):
                curves[key][0].append(int(entry.get("step", len(curves[key][0]))))
                curves[key][1].append(float(value))
    if not any(values for _, values in curves.values()):
        raise ValueError(
            f"`{state_path}` has no PLE metric ({', '.join(CURVE_KEYS)}) in its `log_history`. Is it a PLETrainer "
            "run? Were fewer steps run than `logging_steps`? Lower `logging_steps` (e.g. 1) to log every round."
        )
    return curves


def _moving_average(values, window):
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _run_folder(run_dir) -> Path:
    """The folder the user named: `run_dir` itself, or the folder of a `trainer_state.json` file."""
    run_dir = Path(run_dir)
    return run_dir.parent if run_dir.is_file() else run_dir


def run_name(run_dir) -> str:
    """
    The name a figure of `run_dir` is titled with: the run folder's name, and the checkpoint when one is named
    (`out/checkpoint-30` gives `"out (checkpoint-30)"`).

    Args:
        run_dir (`str` or `os.PathLike`): a run's `output_dir`, a checkpoint folder, or a `trainer_state.json` file.

    Returns:
        `str`
    """
    folder = _run_folder(run_dir).resolve()
    if re.fullmatch(r"checkpoint-\d+", folder.name):
        return f"{folder.parent.name} ({folder.name})"
    return folder.name


@functools.cache
def _figure_class():
    from matplotlib.figure import Figure

    class CurvesFigure(Figure):
        """A figure that Jupyter and Colab display as a PNG with no pyplot backend set up (`_repr_png_`)."""

        def _repr_png_(self):
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=90)
            return buffer.getvalue()

    return CurvesFigure


def _draw(axis, steps, values, color, label, window):
    if window > 1:
        axis.plot(steps, values, color=color, alpha=0.3, linewidth=1)
        axis.plot(steps, _moving_average(values, window), color=color, linewidth=2, label=f"{label} (avg of {window})")
    else:
        axis.plot(steps, values, color=color, linewidth=2, marker="o" if len(values) <= 40 else None, markersize=3,
                  label=label)  # fmt: skip


def plot_curves(run_dir, title=None, smooth: int | None = None):
    """
    Draw a run's PLE curves into a matplotlib figure (not shown, not saved): the mean rewards of the plain and of the
    principle-guided answers; the mean reward gap (principled minus plain, after `reward_transform`) against the
    threshold `tau`, since a pair is trained with the ranking loss when its gap exceeds `tau`; and the fraction of
    pairs so ranked. The x axis is the optimizer step.

    It uses no pyplot state and no backend of its own, so it works headless and in notebooks, where the figure
    displays as a PNG when it is the last value of a cell (or with `display(figure)`).

    Args:
        run_dir (`str` or `os.PathLike`):
            A run's `output_dir`, a checkpoint folder, or a `trainer_state.json` file. A folder without one falls back
            to its last `checkpoint-*`. After `trainer.train()` with `save_strategy="no"`, call `trainer.save_state()`
            first: it writes `output_dir/trainer_state.json`.
        title (`str` or `None`, *optional*, defaults to `None`):
            The figure's title. `None` uses [`run_name`]: the run folder's name.
        smooth (`int` or `None`, *optional*, defaults to `None`):
            Window of the moving average drawn over the rewards and the gap. `None` picks about a tenth of the points;
            `1` draws the raw values only.

    Returns:
        `matplotlib.figure.Figure`: the figure; its three axes are `figure.axes`.
    """
    from matplotlib.ticker import MaxNLocator

    if smooth is not None and (not isinstance(smooth, int) or smooth < 1):
        raise ValueError(f"`smooth={smooth!r}` must be a positive integer (1: no smoothing) or None (automatic).")
    curves = load_curves(run_dir)

    def window(values):
        return smooth or max(1, len(values) // 10)

    figure = _figure_class()(figsize=(13, 3.8))
    reward_axis, gap_axis, rank_axis = figure.subplots(1, 3)
    for key, color, label in (
        ("ple/reward_plain", "tab:blue", "plain prompt"),
        ("ple/reward_principled", "tab:orange", "principle-guided prompt"),
    ):
        steps, values = curves[key]
        if values:
            _draw(reward_axis, steps, values, color, label, window(values))
    reward_axis.set_title("rewards of the two answers")
    reward_axis.set_ylabel("mean reward")

    steps, values = curves["ple/reward_gap"]
    if values:
        _draw(gap_axis, steps, values, "tab:purple", "reward gap", window(values))
    steps, values = curves["ple/tau"]
    if values:
        gap_axis.plot(steps, values, color="tab:green", linewidth=2, linestyle="--", label="threshold tau")
    gap_axis.set_title("gap > tau: ranking loss, else weighted SFT")
    gap_axis.set_ylabel("principled - plain reward")

    steps, values = curves["ple/rank_fraction"]
    if values:
        rank_axis.plot(steps, values, color="tab:red", linewidth=2, marker="o" if len(values) <= 40 else None,
                       markersize=3)  # fmt: skip
    rank_axis.set_title("pairs trained with the ranking loss")
    rank_axis.set_ylabel("fraction of pairs")
    rank_axis.set_ylim(-0.05, 1.05)

    for axis in (reward_axis, gap_axis, rank_axis):
        axis.set_xlabel("optimizer step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="best", fontsize=8)
    figure.suptitle(title if title is not None else run_name(run_dir))
    figure.tight_layout()
    return figure


def plot_run(run_dir, out_png=None, title=None, smooth: int | None = None) -> str:
    """
    Draw a run's PLE curves (see [`plot_curves`]) into a PNG.

    Args:
        run_dir (`str` or `os.PathLike`):
            A run's `output_dir`, a checkpoint folder, or a `trainer_state.json` file.
        out_png (`str`, `os.PathLike` or `None`, *optional*, defaults to `None`):
            Where to write the figure. `None` writes `ple_curves.png` in `run_dir` itself (in the folder of the file
            when a `trainer_state.json` is given), also when the state was read from its last checkpoint.
        title (`str` or `None`, *optional*, defaults to `None`):
            The figure's title. `None` uses [`run_name`]: the run folder's name.
        smooth (`int` or `None`, *optional*, defaults to `None`):
            Window of the moving average drawn over the rewards and the gap. `None` picks about a tenth of the points;
            `1` draws the raw values only.

    Returns:
        `str`: the path of the PNG.
    """
    figure = plot_curves(run_dir, title=title, smooth=smooth)
    out_png = Path(out_png) if out_png is not None else _run_folder(run_dir) / DEFAULT_FIGURE_NAME
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out_png, dpi=110)
    return str(out_png)


def main(argv=None) -> int:
    """
    `ple-trl plot RUN_DIR [--out PNG]`: write the PLE curves of a run as a PNG and print its path.

    Args:
        argv (`list[str]` or `None`, *optional*, defaults to `None`):
            The arguments after `plot`; `None` reads `sys.argv`.

    Returns:
        `int`: the exit status (0).
    """
    parser = argparse.ArgumentParser(
        prog="ple-trl plot",
        description="Draw the PLE curves of a run (rewards of the plain and principled answers, their gap against "
        "tau, fraction of pairs ranked) into a PNG.",
    )
    parser.add_argument("run_dir", help="A run's output_dir, a checkpoint folder or a trainer_state.json file.")
    parser.add_argument("--out", default=None, help=f"PNG to write (default: RUN_DIR/{DEFAULT_FIGURE_NAME}).")
    parser.add_argument("--title", default=None, help="Figure title (default: the run's name).")
    parser.add_argument("--smooth", type=int, default=None, help="Moving-average window for the rewards (1: none).")
    args = parser.parse_args(argv)
    path = plot_run(args.run_dir, args.out, title=args.title, smooth=args.smooth)
    print(f"Figure: {os.path.abspath(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
