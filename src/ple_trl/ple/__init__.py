"""PLE (Progressively Label Enhancement): [`PLEConfig`], [`PLETrainer`], and its maths: [`labeling`] (the threshold
schedule, reward transform, routing and weights) and [`losses`] (ranking and weighted SFT), with [`principles`]."""
