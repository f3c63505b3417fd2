"""ple-trl: Progressively Label Enhancement (Liu, Xu & Geng, ICML 2025) for Hugging Face TRL."""

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# Public names, imported on first use (PEP 562): `import ple_trl` (and so `ple-trl --help`, `ple-trl plot`) must not
# pay for torch, transformers and TRL; `from ple_trl import PLEConfig, PLETrainer` imports them then.
_LAZY_ATTRIBUTES = {
    "PLEConfig": ".ple.config",
    "PLETrainer": ".ple.trainer",
    "SPAConfig": ".spa.config",
    "SPATrainer": ".spa.trainer",
    "PairConfig": ".pairs.config",
    "PairTrainer": ".pairs.trainer",
}
_LAZY_SUBMODULES = ("pairs", "ple", "spa")

__all__ = [
    "PLEConfig", "PLETrainer", "PairConfig", "PairTrainer", "SPAConfig", "SPATrainer", "pairs", "ple", "spa",
    "__version__",
]  # fmt: skip

if TYPE_CHECKING:  # static analysis and IDEs see the real names
    from . import pairs, ple, spa
    from .pairs.config import PairConfig
    from .pairs.trainer import PairTrainer
    from .ple.config import PLEConfig
    from .ple.trainer import PLETrainer
    from .spa.config import SPAConfig
    from .spa.trainer import SPATrainer


def __getattr__(name: str):
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name], __name__), name)
    elif name in _LAZY_SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
