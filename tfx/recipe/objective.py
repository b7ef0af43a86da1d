"""What a run optimises, behind one interface. Objectives are registry entries (``OBJECTIVES``,
built in: ``tfx.train.objectives``, one module each); the builder checks what an objective needs
(a checkpoint to start from, a task) and gives it its typed settings, and the objective owns the
rest of its setup: which parameters train (freezing, adapters), its LightningModule, and what it
does before and after fitting."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from tfx.checkpoint import Task
from tfx.errors import RecipeError
from tfx.recipe.schema import FinetuneSchema, OptimSchema, Recipe

if TYPE_CHECKING:
    from torch import nn


@dataclass
class ObjectiveSettings:
    name: str  # the registry key the recipe names (a resumed run must name the same)
    optim: OptimSchema
    total_steps: int  # length of the LR schedule
    freeze: list[str]  # parameter-name prefixes kept fixed
    task: Task | None = None  # the task head, for objectives that need one
    finetune: FinetuneSchema | None = None  # how the backbone trains under the head (backbone resolved)


class Objective:
    starts_from_checkpoint: ClassVar[bool] = False  # True: the recipe must set init=CHECKPOINT_DIR
    needs_task: ClassVar[bool] = False  # True: the recipe must name a task (a head and its label column)

    def __init__(self, settings: ObjectiveSettings):
        self.settings = settings

    @property
    def name(self) -> str:
        return self.settings.name

    @classmethod
    def check(cls, r: Recipe, src: str) -> None:
        """Refuse a recipe this objective cannot run, before anything is built."""
        if cls.starts_from_checkpoint and not r.init:
            raise RecipeError(f"{src}: objective '{r.objective}' starts from a checkpoint; set init=CHECKPOINT_DIR")
        if not cls.starts_from_checkpoint and r.init:
            raise RecipeError(f"{src}: objective '{r.objective}' trains a new model, init={r.init} is not read; "
                              "use a continue/ recipe (objective=continue) to start from a checkpoint")
        if cls.needs_task and r.task is None:
            raise RecipeError(f"{src}: objective '{r.objective}' needs a task; add task=celltype (or task=regression)")

    def prepare(self, model: nn.Module) -> None:
        """Decide which parameters train (plain torch: freezing, adapters). ``module`` calls it."""
        raise NotImplementedError

    def module(self, model: nn.Module) -> Any:
        """The LightningModule that trains ``model`` (prepared)."""
        raise NotImplementedError

    # ``run``: the Build (tfx.recipe.build, which imports this module)
    def before_fit(self, run: Any, rank: int) -> None:
        pass

    def after_fit(self, run: Any, export_dir: Path) -> None:
        pass
