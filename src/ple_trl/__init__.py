"""ple-trl: Progressively Label Enhancement (Liu, Xu & Geng, ICML 2025) for Hugging Face TRL."""

__version__ = "0.1.0"

from . import labeling, losses, principles, spa  # noqa: E402
from .config import PLEConfig, SPAConfig  # noqa: E402
from .spa_trainer import SPATrainer  # noqa: E402
from .trainer import PLETrainer  # noqa: E402

__all__ = [
    "PLEConfig",
    "PLETrainer",
    "SPAConfig",
    "SPATrainer",
    "labeling",
    "losses",
    "principles",
    "spa",
    "__version__",
]
