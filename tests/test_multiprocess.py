"""Two processes on CPU (gloo) against one process, on the same data, seed and global batch.

`tests/scripts/ple_two_process.py` trains 2 steps of 4 pairs: once in one process (4 pairs per device), once under
`torchrun --nproc_per_node 2` (2 pairs per device). Its reward is a fixed table indexed by (prompt, role), so rewards
do not depend on the sampled text (which differs between the runs), and `reward_transform="zscore"` makes every
routing decision depend on the whole round's rewards: a process that routed on its own pairs only would decide
differently. (`accelerate launch --cpu --num_processes 2` starts a single process unless an MPI hostfile is given,
so torchrun launches the CPU run; the accelerate state it builds is MULTI_CPU over gloo.)
"""

import importlib.util
import json
import os
import random
import socket
import subprocess
import sys
from collections import defaultdict

import pytest
import torch

from ple_trl.ple import labeling

from helpers import DRAWN_PRINCIPLES, NUMBERED_PROMPTS, REPO_ROOT, SRC

TWO_PROCESS_SCRIPT = REPO_ROOT / "tests" / "scripts" / "ple_two_process.py"
STEPS = 2

pytestmark = pytest.mark.slow


def _load_script():
    spec = importlib.util.spec_from_file_location("ple_two_process", TWO_PROCESS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_checked(cmd, output_dir):
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "LOCAL_RANK", "RANK", "WORLD_SIZE"))
    }
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRL_EXPERIMENTAL_SILENCE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return output_dir


def _read_run(output_dir, num_processes):
    labels = [json.loads(line) for line in (output_dir / "enhanced_labels.jsonl").read_text().splitlines()]
    logs, rewards, states = {}, {}, {}
    for rank in range(num_processes):
        states[rank] = json.loads((output_dir / f"state_rank{rank}.json").read_text())
        history = json.loads((output_dir / f"log_rank{rank}.json").read_text())
        logs[rank] = {entry["step"]: entry for entry in history if "ple/tau" in entry}
        rewards[rank] = [
            json.loads(line) for line in (output_dir / f"rewards_rank{rank}.jsonl").read_text().splitlines()
        ]
    return {"labels": labels, "logs": logs, "rewards": rewards, "states": states, "dir": output_dir}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_path):
    common = ["--model", tiny_model_path, "--max_steps", str(STEPS)]
    one = tmp_path_factory.mktemp("one-process")
    script = [str(TWO_PROCESS_SCRIPT), *common]
    run_checked(["nice", sys.executable, *script, "--output_dir", str(one), "--pairs_per_device", "4"], one)
    two = tmp_path_factory.mktemp("two-processes")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
    ]
    run_checked(["nice", *torchrun, *script, "--output_dir", str(two), "--pairs_per_device", "2"], two)
    return {"one": _read_run(one, 1), "two": _read_run(two, 2)}


def _by_pair(labels):
    return {(r["step"], r["prompt"]): (r["route"], r["preferred"], round(r["weight_principled"], 6)) for r in labels}


def test_runs_are_what_they_claim(runs):
    assert runs["one"]["states"][0]["num_processes"] == 1
    assert runs["one"]["states"][0]["shared_prefix_rounds"] == STEPS  # every round generated from the shared prefix
    for rank in (0, 1):
        state = runs["two"]["states"][rank]
        assert state["distributed_type"] == "DistributedType.MULTI_CPU"
        assert state["num_processes"] == 2 and state["backend"] == "gloo" and state["device"].startswith("cpu")
        assert state["shared_prefix_rounds"] == STEPS


def test_each_rank_draws_principles_from_its_own_stream_and_saves_it(runs, tmp_path_factory):
    # Rank r draws from `Random(seed + r)`, one principle per pair, and saves where its stream stands in its checkpoint
    # file.
    draws = {}
    for rank in (0, 1):
        mine = {(r["step"], r["prompt"]) for r in runs["two"]["rewards"][rank]}
        drawn = [r["principle"] for r in runs["two"]["labels"] if (r["step"], r["prompt"]) in mine]
        stream = random.Random(0 + rank)
        assert drawn == [stream.choice(DRAWN_PRINCIPLES) for _ in drawn] and len(drawn) == STEPS * 2
        path = runs["two"]["dir"] / f"checkpoint-{STEPS}" / f"pair_state-rank{rank}.pt"
        saved = torch.load(path, weights_only=False)
        assert saved["principle_rng_state"] == stream.getstate()
        draws[rank] = drawn
    assert draws[0] != draws[1]


def test_every_pair_is_labelled_once(runs):
    for name, run in runs.items():
        keys = [(r["step"], r["prompt"]) for r in run["labels"]]
        assert len(keys) == len(set(keys)) == STEPS * 4, name
        assert sorted(prompt for _, prompt in keys) == sorted(NUMBERED_PROMPTS), name  # one epoch, nothing dropped
    # In the 2-process run each rank scored its own 2 pairs per round, and the two ranks' pairs are disjoint.
    for step in range(STEPS):
        per_rank = [{r["prompt"] for r in runs["two"]["rewards"][rank] if r["step"] == step} for rank in (0, 1)]
        assert len(per_rank[0]) == len(per_rank[1]) == 2 and not per_rank[0] & per_rank[1]


def test_tau_identical_on_both_ranks_and_follows_the_schedule(runs):
    expected = [labeling.tau_at(k, 0.2, 0.9) for k in range(STEPS)]  # steps_per_iteration=1: one decay per step
    assert expected[0] != expected[1]
    for step in range(1, STEPS + 1):
        taus = {rank: runs["two"]["logs"][rank][step]["ple/tau"] for rank in (0, 1)}
        assert taus[0] == taus[1] == runs["one"]["logs"][0][step]["ple/tau"] == pytest.approx(expected[step - 1])
    for record in runs["two"]["labels"]:
        assert record["tau"] == pytest.approx(expected[record["step"]])


def test_routing_matches_single_process(runs):
    one, two = _by_pair(runs["one"]["labels"]), _by_pair(runs["two"]["labels"])
    assert one == two
    routes = [route for route, _, _ in two.values()]
    assert "rank" in routes and "wsft" in routes  # both branches are exercised, so the comparison means something


def test_routing_uses_the_whole_round(runs):
    """Recompute each round's routing from the reward table on all 4 pairs, and show per-rank routing would differ."""
    script = _load_script()
    local_would_differ = False
    for step in range(STEPS):
        round_labels = [r for r in runs["two"]["labels"] if r["step"] == step]
        plain = torch.tensor([script.REWARD_TABLE[r["prompt"]][0] for r in round_labels])
        principled = torch.tensor([script.REWARD_TABLE[r["prompt"]][1] for r in round_labels])
        z = labeling.transform_rewards(torch.stack([plain, principled]), "zscore")
        rank_mask, _, _ = labeling.route_pairs(z[0], z[1], round_labels[0]["tau"], "signed")
        assert [r["route"] for r in round_labels] == ["rank" if m else "wsft" for m in rank_mask.tolist()]
        for rank in (0, 1):
            mine = {r["prompt"] for r in runs["two"]["rewards"][rank] if r["step"] == step}
            idx = [i for i, r in enumerate(round_labels) if r["prompt"] in mine]
            z_local = labeling.transform_rewards(torch.stack([plain[idx], principled[idx]]), "zscore")
            local_mask, _, _ = labeling.route_pairs(z_local[0], z_local[1], round_labels[0]["tau"], "signed")
            local_would_differ |= local_mask.tolist() != rank_mask[idx].tolist()
    assert local_would_differ, "the reward table does not separate global from per-rank routing; adjust it"


def test_logged_metrics_are_global_means(runs):
    local_differs = False
    for step in range(STEPS):
        dumped = defaultdict(list)  # (rank, role) -> rewards this rank computed for its own pairs
        for rank in (0, 1):
            for r in runs["two"]["rewards"][rank]:
                if r["step"] == step:
                    dumped[rank, r["role"]].append(r["reward"])
        round_labels = [r for r in runs["two"]["labels"] if r["step"] == step]
        for role in ("plain", "principled"):
            both = dumped[0, role] + dumped[1, role]
            global_mean = sum(both) / len(both)
            for rank in (0, 1):
                logged = runs["two"]["logs"][rank][step + 1][f"ple/reward_{role}"]
                assert logged == pytest.approx(global_mean, abs=1e-6), (step, role, rank)
                local_mean = sum(dumped[rank, role]) / len(dumped[rank, role])
                local_differs |= abs(local_mean - global_mean) > 1e-3
        rank_fraction = sum(r["route"] == "rank" for r in round_labels) / len(round_labels)
        for rank in (0, 1):
            assert runs["two"]["logs"][rank][step + 1]["ple/rank_fraction"] == pytest.approx(rank_fraction)
            assert runs["two"]["logs"][rank][step + 1]["ple/reward_gap"] == pytest.approx(
                runs["one"]["logs"][0][step + 1]["ple/reward_gap"], abs=1e-6
            )
    assert local_differs, "each rank's own mean equals the global one: the check could not tell them apart"
