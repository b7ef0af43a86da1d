"""Objectives: what a run optimises, one module each, registered under the name a recipe's
``objective`` gives (``tfx.recipe.Objective`` is the interface):

- ``pretrain``: a new model (random weights) learns next gene + counts;
- ``continue`` (``continuation.py``): the same from a checkpoint (official releases included),
  optionally with new species, reporting held-out likelihoods before and after;
- ``finetune``: a task head on the cell embedding, the backbone frozen, partly or fully trained,
  optionally with LoRA adapters.

Each module owns its objective's whole setup: which parameters train, its LightningModule, what it
does around fitting. Adding an objective is one module here plus its recipes: the registry imports
this package when a recipe first names an objective, and the package imports every module in it.
Lightning is imported only when a module is built, so listing them (``tfx registry``) stays light.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
