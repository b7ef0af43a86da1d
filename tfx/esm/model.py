"""Loading fair-esm models from local files or the torch hub cache, without unpickling code."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import torch

from tfx.errors import InputError

DEFAULT_MODEL = "esm2_t36_3B_UR50D"


def model_file(name_or_path: str | os.PathLike) -> Path:
    """A local `.pt` path as it is; a fair-esm name (e.g. esm2_t36_3B_UR50D) in the torch hub cache."""
    text = str(name_or_path)
    if text.endswith(".pt") or os.sep in text or Path(text).exists():
        path = Path(text)
        if not path.is_file():
            raise InputError(f"{path}: no such model file; pass a fair-esm .pt file or a model name such as {DEFAULT_MODEL}")
        return path
    # Where fair-esm's hub loader keeps its downloads (torch.hub's default model_dir).
    path = Path(torch.hub.get_dir()) / "checkpoints" / f"{text}.pt"
    if not path.is_file():
        raise InputError(
            f"--model {text}: {path} is absent and tfx does not download models; fetch "
            f"https://dl.fbaipublicfiles.com/fair-esm/models/{text}.pt, place it locally and pass its path as --model"
        )
    return path


def load_esm(name_or_path: str | os.PathLike) -> tuple[torch.nn.Module, object, Path]:
    """(model in eval mode, its fair-esm Alphabet, the file it came from).

    fair-esm's own loaders call torch.load with full unpickling (its hub path through
    torch.hub.load_state_dict_from_url) and fail on torch >= 2.6 for the argparse.Namespace that
    official files hold, so the file is read here with weights_only=True and only that class
    allowed; fair-esm then builds the model from the loaded dict.
    """
    import esm

    path = model_file(name_or_path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... on a bad file
        raise InputError(f"{path}: not a loadable fair-esm model file ({_first_line(err)}); pass an ESM .pt file as fair-esm distributes it") from err
    if not isinstance(data, dict) or "model" not in data or not ({"cfg", "args"} & data.keys()):
        raise InputError(f"{path}: not a fair-esm model file (needs 'model' and 'cfg' or 'args'); pass an ESM .pt file as fair-esm distributes it")
    # fair-esm picks its ESM-2 builder by the name; ESM-2 files carry "cfg", older ESM files "args".
    name = "esm2" if "cfg" in data and not path.stem.startswith("esm2") else path.stem
    try:
        with warnings.catch_warnings():
            # The contact-regression head is not used for embeddings, so its weights are not loaded.
            warnings.filterwarnings("ignore", message="Regression weights not found")
            model, alphabet = esm.pretrained.load_model_and_alphabet_core(name, data, None)
    except (KeyError, AttributeError, RuntimeError, ValueError) as err:
        raise InputError(f"{path}: fair-esm cannot build a model from this file ({_first_line(err)}); pass an official ESM .pt file") from err
    return model.eval(), alphabet, path


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"
