"""``pretrain``: a new model (random weights) learns next gene + counts; parameters whose names
start with one of the recipe's ``freeze`` prefixes stay fixed."""

from __future__ import annotations

from tfx.recipe import Objective
from tfx.registry import OBJECTIVES


@OBJECTIVES.register("pretrain")
class Pretrain(Objective):
    def prepare(self, model) -> None:
        for name, p in model.named_parameters():  # parameter-name prefixes kept fixed
            if any(name.startswith(prefix) for prefix in self.settings.freeze):
                p.requires_grad = False

    def module(self, model):
        from tfx.train.module import PretrainModule

        self.prepare(model)
        return PretrainModule(model, self.settings.optim, self.settings.total_steps)
