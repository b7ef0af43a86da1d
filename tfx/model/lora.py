"""LoRA adapters on the encoder's projections, through peft (imported only when adapters are used).

Training wraps the target ``nn.Linear`` modules in place, so the model keeps its class and its
forward; its state_dict then holds ``<module>.base_layer.weight`` and the adapters'
``<module>.lora_A.default.weight`` / ``lora_B``. Merging folds the adapters into the weights and
restores the plain layout that the reference package loads.
"""

from __future__ import annotations

from torch import Tensor, nn

from tfx.errors import ConfigError

# Each block's attention q, k, v, out projections (SelfAttention.linears) and feed-forward layers.
LORA_TARGETS = ("linears.0", "linears.1", "linears.2", "linears.3", "linear1", "linear2")


def add_lora(model: nn.Module, settings: dict):
    """Wrap ``settings["target_modules"]`` with rank-``rank`` adapters; afterwards only the adapters
    require gradients. Returns peft's LoraModel, whose ``merge_and_unload()`` folds them back in."""
    from peft import LoraConfig, LoraModel

    config = LoraConfig(r=int(settings["rank"]), lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                        target_modules=list(settings["target_modules"]))
    try:
        return LoraModel(model, config, "default")
    except ValueError as err:  # peft: a target that matches no module
        raise ConfigError(f"finetune.lora.target_modules={list(settings['target_modules'])}: "
                          f"{str(err).splitlines()[0]} (the encoder's are {', '.join(LORA_TARGETS)})") from None


def is_adapter(name: str) -> bool:
    return ".lora_" in name


def split_adapters(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A LoRA-wrapped state_dict -> (the plain model's entries, the adapters' entries)."""
    plain = {k.replace(".base_layer.", "."): v for k, v in state.items() if not is_adapter(k)}
    return plain, {k: v for k, v in state.items() if is_adapter(k)}


def merge_adapters(model: nn.Module, settings: dict, adapters: dict[str, Tensor]) -> nn.Module:
    """Load ``adapters`` into ``model`` (plain, its base weights loaded) and merge them into its weights."""
    lora = add_lora(model, settings)
    result = model.load_state_dict(adapters, strict=False)
    if result.unexpected_keys or any(is_adapter(k) for k in result.missing_keys):
        raise ConfigError(f"the adapter weights do not fit the LoRA settings {settings} "
                          f"(unexpected {result.unexpected_keys[:3]}, missing "
                          f"{[k for k in result.missing_keys if is_adapter(k)][:3]})")
    return lora.merge_and_unload()
