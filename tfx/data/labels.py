"""Training targets from an obs column, one codec for h5ad files and shards: class indices for a
categorical task, numbers for regression. A cell without a value is refused, never a class "nan";
where the recipe asks (``task.missing_labels=drop``), the readers drop such cells instead."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tfx.errors import InputError


def missing(values) -> np.ndarray:
    """[cells] bool: the cells without a value (None, NaN, pd.NA)."""
    return pd.isna(pd.Series(values, dtype=object)).to_numpy()


def refuse_missing(key: str, n: int, where: str) -> None:
    if n:
        raise InputError(f"{where}: obs '{key}' has no value for {n} cells; fill the column, drop those cells, "
                         "or set task.missing_labels=drop to train on the rest")


def discover_classes(values: Iterable, key: str, where: str, drop_missing: bool = False) -> list[str]:
    """The sorted classes of obs ``key``'s values; at least two, none missing (unless dropped)."""
    values = np.asarray(list(values), dtype=object)
    absent = missing(values) if len(values) else np.zeros(0, dtype=bool)
    if not drop_missing:
        refuse_missing(key, int(absent.sum()), where)
    classes = sorted({str(v) for v in values[~absent]})
    if len(classes) < 2:
        raise InputError(f"{where}: the training data has {len(classes)} value(s) of '{key}'; "
                         "classification needs at least 2")
    return classes


@dataclass
class LabelCodec:
    """obs ``key`` as targets: the index in ``classes``, or (``classes`` None) the number itself.
    With ``drop_missing`` a cell without a value encodes as -1 (or NaN) and its reader drops it."""

    key: str
    classes: list[str] | None = None
    drop_missing: bool = False

    def __post_init__(self):
        self._index = None if self.classes is None else {c: i for i, c in enumerate(self.classes)}

    def check_column(self, columns, where: str) -> None:
        if self.key not in columns:
            raise InputError(f"{where}: obs has no column '{self.key}'; set task.label_key to an obs column")

    def unlabelled(self, encoded: np.ndarray) -> np.ndarray:
        """[cells] bool: the cells ``encode`` marked as having no value (with ``drop_missing``)."""
        return np.isnan(encoded) if self._index is None else encoded < 0

    def encode(self, values, where: str) -> np.ndarray:
        """[cells] int64 class indices, or float32 numbers for regression."""
        values = np.asarray(values, dtype=object)
        absent = missing(values)
        if absent.any():
            if not self.drop_missing:
                refuse_missing(self.key, int(absent.sum()), where)
            out = np.full(len(values), np.nan if self._index is None else -1,
                          dtype=np.float32 if self._index is None else np.int64)
            if not absent.all():
                out[~absent] = self.encode(values[~absent], where)
            return out
        if self._index is None:
            try:
                numbers = values.astype(np.float32)
            except (TypeError, ValueError):
                raise InputError(f"{where}: obs '{self.key}' holds {values[0]!r}, not a number; a regression task "
                                 "needs a numeric column (or use task=celltype)") from None
            if not np.isfinite(numbers).all():
                raise InputError(f"{where}: obs '{self.key}' holds infinite values; regression needs finite targets")
            return numbers
        text = values.astype(str)
        unknown = sorted(set(text) - set(self._index))
        if unknown:
            raise InputError(f"{where}: labels of obs '{self.key}' not seen in training: {unknown[:5]} "
                             f"(the {len(self._index)} classes come from the training data)")
        return np.array([self._index[t] for t in text], dtype=np.int64)
