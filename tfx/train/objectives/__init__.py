"""Objectives: what a run optimises, one module each, registered under the name a recipe's
``objective`` gives (``tfx.recipe.Objective`` is the interface):

- ``pretrain``: a new model (random weights) learns next gene + counts;
- ``continue`` (``continuation.py``): the same from a checkpoint (official releases included),
  optionally with new species, reporting held-out likelihoods before and after;
- ``finetune``: a task head on the cell embedding, the backbone frozen, partly or fully trained,
  optionally with LoRA adapters.

Each module owns its objective's whole setup: which parameters train, its LightningModule, what it
does around fitting. Adding an objective is one module here, its name beside the module in
``OBJECTIVES`` (``tfx/registry.py``), and its recipes: the registry imports the module when a recipe
first names the objective, and this package imports every module in it. Lightning is imported only
when a module is built; listing the objectives (``tfx registry``) imports none of them.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
