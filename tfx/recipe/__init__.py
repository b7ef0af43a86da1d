"""Recipes: the typed schema, composition with Hydra, and the one builder that reads them."""

from tfx.recipe.build import Build, build
from tfx.recipe.compose import available, compose, recipe_path
from tfx.recipe.schema import Recipe

__all__ = ["Build", "Recipe", "available", "build", "compose", "recipe_path"]
