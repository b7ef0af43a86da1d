"""Task heads for fine-tuning: a prediction from the cell embedding, its loss and its metrics."""

from __future__ import annotations

from torch import Tensor, nn

from tfx.registry import TASKS


def _mlp(embed_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU(),
                         nn.Linear(embed_dim, out_dim))


@TASKS.register("classification")
class ClassificationTask(nn.Module):
    """A categorical obs column (e.g. cell_type); ``classes`` in the order of the head's outputs."""

    categorical = True

    def __init__(self, embed_dim: int, classes: list[str]):
        super().__init__()
        self.classes = list(classes)
        self.head = _mlp(embed_dim, len(self.classes))

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return nn.functional.cross_entropy(pred, target)

    def metrics(self, pred: Tensor, target: Tensor) -> dict:
        return {"accuracy": (pred.argmax(-1) == target).float().mean()}


@TASKS.register("regression")
class RegressionTask(nn.Module):
    """A numeric obs column."""

    categorical = False

    def __init__(self, embed_dim: int, classes=None):
        super().__init__()
        self.classes = None
        self.head = _mlp(embed_dim, 1)

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        return nn.functional.mse_loss(pred.squeeze(-1), target.float())

    def metrics(self, pred: Tensor, target: Tensor) -> dict:
        return {"mae": (pred.squeeze(-1) - target.float()).abs().mean()}
