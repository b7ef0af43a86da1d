"""Finding, listing and composing recipes.

Recipes (``recipes/``) and the config groups they compose (``conf/``) sit at the top of the
repository and ship in the wheel as ``tfx/recipes`` and ``tfx/conf``. A recipe is named by its
path under ``recipes/`` (``pretrain/tiny``) or given as a YAML file of the user's own; a user's
recipe directory joins the search with ``--recipes DIR`` (or ``TFX_RECIPES``).

Composing checks the whole recipe (types, choices and bounds) before anything runs, and settles the
settings that depend on what the user typed: a GPU recipe run on CPU trains in fp32 (in one
process) unless ``trainer.precision`` (``trainer.devices``) was given on the command line. This is
also the one module that reads a config by key (``.get``); everything else reads the typed ``Recipe``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tfx.errors import ConfigError, RecipeError
from tfx.recipe.schema import HALF_PRECISIONS, Accelerator, Precision, Recipe, register

log = logging.getLogger(__name__)

_PACKAGE = Path(__file__).resolve().parents[1]


def _resource(name: str) -> Path:
    """``tfx/<name>`` in an installed wheel; ``<name>/`` beside the package in a source checkout."""
    for path in (_PACKAGE / name, _PACKAGE.parent / name):
        if path.is_dir():
            return path
    raise RecipeError(f"tfx's {name}/ directory is missing from {_PACKAGE}; reinstall tfx")


def recipe_dirs(extra: str | os.PathLike | None = None) -> list[Path]:
    """Where recipe names are looked up: the user's directory first, then the packaged recipes."""
    dirs = [Path(d) for d in (extra, os.environ.get("TFX_RECIPES")) if d]
    for d in dirs:
        if not d.is_dir():
            raise RecipeError(f"{d}: no such recipe directory; check --recipes or TFX_RECIPES")
    return [*dirs, _resource("recipes")]


def conf_dir() -> Path:
    return _resource("conf")


def available(extra: str | os.PathLike | None = None) -> dict[str, tuple[Path, str]]:
    """{recipe name: (file, one-line description)}; a user's recipe shadows a packaged one."""
    found = {}
    for base in reversed(recipe_dirs(extra)):
        for path in sorted(base.rglob("*.yaml")):
            found[str(path.relative_to(base).with_suffix(""))] = (path, _description(path))
    return dict(sorted(found.items()))


def _description(path: Path) -> str:
    try:
        return str((yaml.safe_load(path.read_text()) or {}).get("description", ""))
    except yaml.YAMLError as err:
        return f"(unreadable: {str(err).splitlines()[0]})"


def recipe_path(recipe: str, extra: str | os.PathLike | None = None) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise RecipeError(f"{recipe}: no such recipe file")
        return path.resolve()
    name = recipe.removeprefix("recipes/").removesuffix(".yaml")
    for base in recipe_dirs(extra):
        if (base / f"{name}.yaml").is_file():
            return (base / f"{name}.yaml").resolve()
    raise RecipeError(f"unknown recipe '{recipe}' (known: {', '.join(available(extra))}; `tfx train --list`)")


def _one_line(err: BaseException) -> str:
    """The first line of an error, with the key it concerns (OmegaConf puts both on later lines)."""
    while err.__cause__ is not None and not isinstance(err, OmegaConfBaseException):
        err = err.__cause__
    text = str(err).strip().splitlines() or [type(err).__name__]
    key = getattr(err, "full_key", None)
    return f"{key}: {text[0]}" if key and key not in text[0] else text[0]


def compose(recipe: str, overrides: list[str] = (), extra: str | os.PathLike | None = None) -> DictConfig:
    """Real Hydra composition, checked against the schema: an unknown key or a wrong type fails
    here, before any compute, with the key's path and the recipe file in one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    path = recipe_path(recipe, extra)
    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(path.parent), version_base=None):
            cfg = hydra_compose(config_name=path.stem,
                                overrides=[*overrides, f"hydra.searchpath=[file://{conf_dir()}]"])
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
        # checked again from plain values: a user's recipe may not list tfx_recipe, and Hydra lets
        # `+key=value` add keys even to a typed node
        cfg = OmegaConf.merge(OmegaConf.structured(Recipe), OmegaConf.to_container(cfg))
        missing = sorted(OmegaConf.missing_keys(cfg))  # resolves interpolations: ${oc.env:UNSET} fails here
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as err:  # a python tag: refused, never built
        raise RecipeError(f"{path}: {_one_line(err)}") from None
    if missing:
        raise RecipeError(f"{path}: set {', '.join(missing)} (e.g. {missing[0]}=...)")
    _on_cpu(cfg, overrides)
    typed(cfg, str(path))  # bounds and the model's own checks, before anything is built or written
    return cfg


def typed(cfg: DictConfig, src: str = "recipe") -> Recipe:
    """The composed recipe as its dataclasses, every bound checked; one line naming ``src`` if not."""
    try:
        return OmegaConf.to_object(cfg)
    except RecipeError as err:
        raise RecipeError(f"{src}: {err}") from None
    except ConfigError as err:  # ModelConfig checks itself as it is built
        raise RecipeError(f"{src}: model: {err}") from None
    except OmegaConfBaseException as err:
        raise RecipeError(f"{src}: {_one_line(err)}") from None


def _given(overrides: list[str], key: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return any(o.key_or_group == key for o in OverridesParser.create().parse_overrides(list(overrides)))


def _on_cpu(cfg: DictConfig, overrides: list[str]) -> None:
    """A recipe written for GPUs run with ``trainer.accelerator=cpu``: bf16 (or fp16) is several times
    slower than fp32 on CPU, so it trains in fp32, and "every device" (devices=-1) is one process;
    each unless the command line set it."""
    t, changed = cfg.trainer, []
    if t.accelerator != Accelerator.cpu:
        return
    if t.precision in HALF_PRECISIONS and not _given(overrides, "trainer.precision"):
        changed.append(f"precision {t.precision.value} -> 32 (fp32; half precision is slow on CPU)")
        t.precision = Precision["32"]
    if t.devices == -1 and not _given(overrides, "trainer.devices"):
        changed.append("devices -1 -> 1 (one process)")
        t.devices = 1
    if changed and int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0:
        log.info("trainer.accelerator=cpu: %s; set them on the command line to keep the recipe's", ", ".join(changed))


def recorded_objective(run_dir: Path) -> str | None:
    """The objective a run directory's ``config.yaml`` records; None if it has none."""
    path = Path(run_dir) / "config.yaml"
    return OmegaConf.load(path).get("objective") if path.exists() else None
