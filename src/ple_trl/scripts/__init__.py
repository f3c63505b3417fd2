"""The logic behind `examples/scripts/ple.py` and the `ple-trl train` / `ple-trl eval` commands.

- [`ple`]: the TRL-style training script (`TrlParser` over [`PLEScriptArguments`], [`PLEConfig`] and
  [`~trl.ModelConfig`]): dataset, rewards, an optional SFT stage before PLE (Algorithm 1, line 1), then [`PLETrainer`].
- [`eval`]: generates answers to a prompt set with one model (or two, for the win rate) and prints the offline
  metrics of `ple_trl.metrics`.
- [`arguments`]: the argument dataclasses both commands share ([`DataArguments`], [`RewardArguments`]); the steps
  behind them live in `ple_trl.data` and `ple_trl.rewards`.
"""
