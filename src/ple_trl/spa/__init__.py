"""SPA (self-generated preference data): [`SPAConfig`], [`SPATrainer`], and its maths: [`labeling`] (best/worst by the
implicit reward) and [`losses`] (the DPO margin, confidence, self-refinement)."""
