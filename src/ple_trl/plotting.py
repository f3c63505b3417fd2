"""The curves of a PLE run, from its `trainer_state.json`: `ple-trl plot RUN_DIR`.

One PNG with three panels over the optimizer steps: the mean reward of the plain and of the principle-guided answers
(`ple/reward_plain`, `ple/reward_principled`), the threshold `ple/tau`, and the fraction of pairs trained with the
ranking loss (`ple/rank_fraction`). Per-round values are drawn thin, their moving average thick. Headless (Agg).

```bash
ple-trl plot ple-demo                  # writes ple-demo/ple_curves.png
ple-trl plot ple-demo/checkpoint-30 --out curves.png
```
"""

import argparse
import json
import math
import os
from pathlib import Path

CURVE_KEYS = ("ple/reward_plain", "ple/reward_principled", "ple/tau", "ple/rank_fraction")
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
        "on each checkpoint save (or call `trainer.state.save_to_json(...)`)."
    )


def load_curves(run_dir) -> dict[str, tuple[list[float], list[float]]]:
    """
    The PLE curves of a run: for each of `ple/reward_plain`, `ple/reward_principled`, `ple/tau` and
    `ple/rank_fraction`, the steps and values logged in `log_history`.

    Args:
        run_dir (`str` or `os.PathLike`):
            A run's `output_dir`, a checkpoint folder, or a `trainer_state.json` file. A folder without one falls back to
            its last `checkpoint-*`.

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
                curves[key][0].append(entry.get("step", len(curves[key][0])))
                curves[key][1].append(float(value))
    if not any(values for _, values in curves.values()):
        raise ValueError(
            f"`{state_path}` has no PLE metric ({', '.join(CURVE_KEYS)}) in its `log_history`. Is it a PLETrainer run? "
            "Were fewer steps run than `logging_steps`? Lower `logging_steps` (e.g. 1) to log every round."
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


def plot_run(run_dir, out_png=None, title=None, smooth: int | None = None) -> str:
    """
    Draw a run's PLE curves (rewards of plain and principled answers, `tau`, rank fraction) into a PNG.

    Args:
        run_dir (`str` or `os.PathLike`):
            A run's `output_dir`, a checkpoint folder, or a `trainer_state.json` file.
        out_png (`str`, `os.PathLike` or `None`, *optional*, defaults to `None`):
            Where to write the figure. `None` writes `ple_curves.png` in `run_dir` (beside the state file when a file
            is given).
        title (`str` or `None`, *optional*, defaults to `None`):
            The figure's title. `None` uses the run folder's name.
        smooth (`int` or `None`, *optional*, defaults to `None`):
            Window of the moving average drawn over the reward curves. `None` picks about a tenth of the points; `1`
            draws the raw values only.

    Returns:
        `str`: the path of the PNG.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if smooth is not None and (not isinstance(smooth, int) or smooth < 1):
        raise ValueError(f"`smooth={smooth!r}` must be a positive integer (1: no smoothing) or None (automatic).")
    state_path = _find_state(run_dir)
    curves = load_curves(state_path)
    if out_png is None:
        out_png = state_path.parent / DEFAULT_FIGURE_NAME
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    reward_axis, tau_axis, rank_axis = axes
    colors = {"ple/reward_plain": "tab:blue", "ple/reward_principled": "tab:orange"}
    labels = {"ple/reward_plain": "plain prompt", "ple/reward_principled": "principle-guided prompt"}
    for key in ("ple/reward_plain", "ple/reward_principled"):
        steps, values = curves[key]
        if not values:
            continue
        window = smooth or max(1, len(values) // 10)
        if window > 1:
            reward_axis.plot(steps, values, color=colors[key], alpha=0.3, linewidth=1)
            reward_axis.plot(steps, _moving_average(values, window), color=colors[key], linewidth=2,
                             label=f"{labels[key]} (avg of {window})")  # fmt: skip
        else:
            reward_axis.plot(steps, values, color=colors[key], linewidth=2, label=labels[key])
    reward_axis.set_title("mean reward of the answers (training rounds)")
    reward_axis.legend(loc="best", fontsize=8)
    for axis, key, name, color in (
        (tau_axis, "ple/tau", "threshold tau", "tab:green"),
        (rank_axis, "ple/rank_fraction", "fraction of pairs ranked", "tab:red"),
    ):
        steps, values = curves[key]
        if values:
            axis.plot(steps, values, color=color, linewidth=2, marker="o" if len(values) <= 40 else None, markersize=3)
        axis.set_title(name)
    rank_axis.set_ylim(-0.05, 1.05)
    tau_axis.set_ylim(bottom=0)
    for axis in axes:
        axis.set_xlabel("optimizer step")
        axis.grid(alpha=0.3)
    fig.suptitle(title if title is not None else f"PLE run: {state_path.parent.resolve().name}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
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
        description="Draw the PLE curves (rewards of plain and principled answers, tau, rank fraction) of a run.",
    )
    parser.add_argument("run_dir", help="A run's output_dir, a checkpoint folder or a trainer_state.json file.")
    parser.add_argument("--out", default=None, help=f"PNG to write (default: RUN_DIR/{DEFAULT_FIGURE_NAME}).")
    parser.add_argument("--title", default=None, help="Figure title (default: the run folder's name).")
    parser.add_argument("--smooth", type=int, default=None, help="Moving-average window for the rewards (1: none).")
    args = parser.parse_args(argv)
    path = plot_run(args.run_dir, args.out, title=args.title, smooth=args.smooth)
    print(f"Figure: {os.path.abspath(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
