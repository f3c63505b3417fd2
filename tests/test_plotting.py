"""`ple-trl plot RUN_DIR` and `ple_trl.plotting`: the figure lands in RUN_DIR (not in the checkpoint the state was read
from), is titled with the run's name, has labelled axes with integer steps, and draws the reward gap against tau."""

import json

import pytest
from matplotlib.ticker import MaxNLocator

from ple_trl import cli, plotting

from helpers import PNG_SIGNATURE

TAU = [0.2 * 0.9**step for step in range(4)]
GAP = [0.5, 0.3, 0.1, 0.05]


@pytest.fixture
def run_dir(tmp_path):
    """A run whose only `trainer_state.json` is in its last checkpoint (what `save_strategy="steps"` leaves)."""
    history = [
        {"step": step + 1, "ple/reward_plain": 0.1 * step, "ple/reward_principled": 0.5, "ple/reward_gap": GAP[step],
         "ple/tau": TAU[step], "ple/rank_fraction": 0.25 * step, "loss": 1.0}
        for step in range(4)
    ]  # fmt: skip
    run = tmp_path / "my-run"
    for checkpoint in ("checkpoint-2", "checkpoint-4"):
        (run / checkpoint).mkdir(parents=True)
        steps = int(checkpoint.split("-")[1])
        (run / checkpoint / "trainer_state.json").write_text(json.dumps({"log_history": history[:steps]}))
    assert not (run / "trainer_state.json").exists()
    return run


def test_figure_lands_in_the_run_dir_titled_with_the_run(run_dir):
    path = plotting.plot_run(run_dir)
    assert path == str(run_dir / "ple_curves.png")
    assert (run_dir / "ple_curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not list(run_dir.glob("checkpoint-*/ple_curves.png"))

    figure = plotting.plot_curves(run_dir, smooth=1)
    assert figure._suptitle.get_text() == "my-run"
    assert figure._repr_png_().startswith(PNG_SIGNATURE)  # what a notebook displays
    reward_axis, gap_axis, rank_axis = figure.axes
    for axis in figure.axes:
        assert axis.get_xlabel() == "optimizer step"
        assert axis.get_ylabel()
        assert isinstance(axis.xaxis.get_major_locator(), MaxNLocator)
        assert all(tick == int(tick) for tick in axis.get_xticks())
    assert [axis.get_ylabel() for axis in figure.axes] == [
        "mean reward", "principled - plain reward", "fraction of pairs"
    ]  # fmt: skip
    # The gap and tau share a panel, read from the last checkpoint (4 steps).
    lines = {line.get_label(): line for line in gap_axis.get_lines()}
    assert list(lines["reward gap"].get_xdata()) == [1, 2, 3, 4]
    assert list(lines["reward gap"].get_ydata()) == pytest.approx(GAP)
    assert list(lines["threshold tau"].get_ydata()) == pytest.approx(TAU)
    assert [line.get_label() for line in reward_axis.get_lines()] == ["plain prompt", "principle-guided prompt"]
    assert list(rank_axis.get_lines()[0].get_ydata()) == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_a_named_checkpoint_is_plotted_into_itself_and_named(run_dir):
    checkpoint = run_dir / "checkpoint-2"
    assert plotting.run_name(checkpoint) == "my-run (checkpoint-2)"
    assert plotting.run_name(checkpoint / "trainer_state.json") == "my-run (checkpoint-2)"
    assert plotting.plot_run(checkpoint) == str(checkpoint / "ple_curves.png")
    figure = plotting.plot_curves(checkpoint, title="mine")
    assert figure._suptitle.get_text() == "mine"
    assert list(figure.axes[1].get_lines()[-1].get_ydata()) == pytest.approx(TAU[:2])


def test_plot_command(run_dir, tmp_path, capsys):
    assert cli.main(["plot", str(run_dir)]) == 0
    assert (run_dir / "ple_curves.png").exists()
    assert str(run_dir / "ple_curves.png") in capsys.readouterr().out
    # A run saved with save_strategy="no" has no state: one line that says how to write it, no traceback.
    empty = tmp_path / "no-state"
    empty.mkdir()
    assert cli.main(["plot", str(empty)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("ple-trl plot: error: ") and "trainer.save_state()" in error
    assert "Traceback" not in error
