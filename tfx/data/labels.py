"""Training targets from an obs column, one codec for h5ad files and shards: class indices for a
categorical task, numbers for regression. A cell without a value is refused, never a class "nan"."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tfx.errors import InputError


def _missing(values) -> np.ndarray:
    return pd.isna(pd.Series(values, dtype=object)).to_numpy()


def discover_classes(values: Iterable, key: str, where: str) -> list[str]:
    """The sorted classes of obs ``key``'s values; at least two, none missing."""
    values = list(values)
    missing = int(_missing(values).sum()) if values else 0
    if missing:
        raise InputError(f"{where}: obs '{key}' has no value for {missing} cells; drop those cells or fill the column")
    classes = sorted({str(v) for v in values})
    if len(classes) < 2:
        raise InputError(f"{where}: the training data has {len(classes)} value(s) of '{key}'; "
                         "classification needs at least 2")
    return classes


@dataclass
class LabelCodec:
    """obs ``key`` as targets: the index in ``classes``, or (``classes`` None) the number itself."""

    key: str
    classes: list[str] | None = None

    def __post_init__(self):
        self._index = None if self.classes is None else {c: i for i, c in enumerate(self.classes)}

    def check_column(self, columns, where: str) -> None:
        if self.key not in columns:
            raise InputError(f"{where}: obs has no column '{self.key}'; set task.label_key to an obs column")

    def encode(self, values, where: str) -> np.ndarray:
        """[cells] int64 class indices, or float32 numbers for regression."""
        values = np.asarray(values, dtype=object)
        missing = _missing(values)
        if missing.any():
            raise InputError(f"{where}: obs '{self.key}' has no value for {int(missing.sum())} cells; "
                             "drop those cells or fill the column")
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
