"""Aux (assay) vocabularies: ``vocabs/<column>_vocab.json`` mapping values to ids, with 'unknown'."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tfx.vocab.genes import VocabError


def read_aux_vocab(vocab_dir: str | os.PathLike, columns: list[str]) -> dict[str, dict[str, int]]:
    vocabs = {}
    for col in columns:
        path = Path(vocab_dir) / f"{col}_vocab.json"
        if not path.exists():
            raise VocabError(f"{path}: missing aux vocabulary for column '{col}'")
        try:
            vocab = json.loads(path.read_text())
            vocab = {str(k): int(v) for k, v in vocab.items()}
        except (ValueError, TypeError, AttributeError) as err:
            raise VocabError(f"{path}: not a JSON object of token -> integer id ({type(err).__name__}: {err}); "
                             "the checkpoint is damaged") from None
        if "unknown" not in vocab:
            raise VocabError(f"{path}: aux vocabulary has no 'unknown' entry")
        vocabs[col] = vocab
    return vocabs


def write_aux_vocab(vocab_dir: str | os.PathLike, column: str, vocab: dict[str, int]) -> None:
    path = Path(vocab_dir) / f"{column}_vocab.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(vocab, indent=2))
    os.replace(tmp, path)


def official_assay_vocab() -> dict[str, int]:
    """The assay vocabulary of the official releases (CELLxGENE assay names), for new models."""
    return json.loads((Path(__file__).parent / "assay_vocab.json").read_text())


def aux_token_ids(aux_vocabs: dict[str, dict[str, int]], values: dict[str, Sequence | None], n: int
                  ) -> np.ndarray | None:
    """[n, columns] ids of n cells' aux values (``values[col]``, None when the data lacks the
    column); a value the vocabulary lacks is 'unknown'. None for a model without aux tokens."""
    if not aux_vocabs:
        return None
    columns = []
    for col, vocab in aux_vocabs.items():
        given = values.get(col)
        if given is None:
            columns.append(np.full(n, vocab["unknown"], dtype=np.int64))
        else:
            columns.append(np.array([vocab.get(str(v), vocab["unknown"]) if v is not None else vocab["unknown"]
                                     for v in given], dtype=np.int64))
    return np.stack(columns, axis=1)
