"""The pair-training base of PLE and SPA: two answers per prompt, trained together ([`PairTrainer`],
[`PairConfig`]), and the techniques it runs (prefix sharing, the iteration snapshot, the audit log, checkpoints)."""
