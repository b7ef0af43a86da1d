"""Recipes: the typed schema, composition with Hydra, and the one builder that reads them."""

from tfx.recipe.build import Build, TrainerSettings, build
from tfx.recipe.compose import available, compose, recipe_path
from tfx.recipe.objective import Objective, ObjectiveSettings
from tfx.recipe.schema import Recipe

__all__ = ["Build", "Objective", "ObjectiveSettings", "Recipe", "TrainerSettings", "available", "build", "compose",
           "recipe_path"]
