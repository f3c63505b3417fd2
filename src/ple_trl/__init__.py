"""ple-trl: Progressively Label Enhancement (Liu, Xu & Geng, ICML 2025) for Hugging Face TRL."""

__version__ = "0.1.0"
