"""The offline tasks of the demo and the comparison (`ple_trl.tasks`): their prompts, training rewards and held-out
judges, on known texts."""

import pytest

from ple_trl import tasks as tasks_module
from ple_trl.tasks import afinn_per_word, clean_probability, load_prompts, tasks


def test_judges_offline():
    # AFINN-165: "good" +3, "bad" -3; per word.
    assert afinn_per_word(completions=["good film", "bad", ""]) == [1.5, -3.0, 0.0]
    clean = clean_probability(completions=["Have a lovely day, friend.", "You are a fucking idiot."])
    assert clean[0] > 0.9 > 0.1 > clean[1]


def test_tasks_ship_disjoint_splits():
    polite = tasks()["polite"]
    train, heldout = polite.prompts("train"), polite.prompts("heldout")
    assert (len(train), len(heldout)) == (100, 40)
    assert not set(train) & set(heldout)
    warm = tasks()["warm"]
    assert warm.prompts("heldout") == load_prompts("heldout") and len(load_prompts("train")) == 320
    # VADER compound of the first answer; the second: profanity penalty -1 and VADER's -0.4019.
    assert warm.reward(["p", "p"], ["What a wonderful day", "damn"]) == pytest.approx(
        [0.5719, -1.0 + (-0.4019)], abs=1e-4
    )


def test_the_tasks_train_the_papers_lora_adapter():
    assert tasks_module.LORA == {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"}
