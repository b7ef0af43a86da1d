"""Model and data configuration, read from and written to the official ``config.json`` layout.

The official layout nests everything under ``model``: ``model_config`` (architecture),
``loss_config``, ``data_config`` (vocabulary files, special tokens, aux columns) and, for tfx's
own additions that the reference does not know (likelihood, attention backend), ``tfx``.
``_target_`` keys name reference classes: they are mapped to what tfx builds, never imported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from tfx.errors import ConfigError

# Counts above this are clipped unless a checkpoint records otherwise (the official inference default).
DEFAULT_CLIP_COUNTS = 30

# The special-token order of the official releases; the vocabulary starts with these rows.
SPECIAL_TOKENS = ["unknown", "[PAD]", "[START]", "[END]", "[RD]", "[CELL]", "[MASK]"]

# Count-head links: TranscriptFormer's softmax over the cell, or a causal per-position link.
MU_LINKS = ("softmax", "exp", "softplus")

# `_target_` values of official configs and what they mean to tfx.
MODEL_TARGETS = {"transcriptformer.model.model.Transcriptformer": "transcriptformer"}
SECTION_TARGETS = {
    "transcriptformer.data.dataclasses.DataConfig",
    "transcriptformer.data.dataclasses.ModelConfig",
    "transcriptformer.data.dataclasses.LossConfig",
    "transcriptformer.data.dataclasses.InferenceConfig",
}


@dataclass
class ModelConfig:
    """Architecture and objective. Defaults are TF-Sapiens' published sizes."""

    embed_dim: int = 2048
    num_heads: int = 16
    num_layers: int = 12
    model_dim: int = 2048  # feed-forward width
    dropout: float = 0.1
    activation: str = "gelu"
    attn_bias: bool = False
    fw_bias: bool = False
    softcap: float = 10.0
    seq_len: int = 2047  # gene positions; the aux (assay) tokens come on top
    aux_len: int = 1
    block_len: int = 128
    log_counts_eps: float = 1e-6
    gene_head_hidden_dim: int = 2048
    mu_link_fn: str = "softmax"  # exp / softplus: causal count head (see MU_LINKS)
    # loss_config
    gene_id_loss_weight: float = 1.0
    softplus_approx: bool = True
    # tfx section (registry names)
    likelihood: str = "ztp"
    attention: str = "auto"
    count_head: str = "count"
    gene_head: str = "gene_id"

    def __post_init__(self):
        kinds = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) != (f.type == "bool") or not isinstance(value, kinds[f.type]):
                raise ConfigError(f"{f.name} is {value!r}, not {'an' if f.type == 'int' else 'a'} {f.type}")
            if f.type == "int" and f.name != "aux_len" and value < 1:
                raise ConfigError(f"{f.name} is {value}; it must be at least 1")
        if self.seq_len < 2:  # position 0 is [START]: a shorter cell holds no gene to learn or embed
            raise ConfigError(f"seq_len is {self.seq_len}; it must be at least 2 ([START] and one gene)")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout is {self.dropout}; it must be from 0 up to (not including) 1")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.mu_link_fn not in MU_LINKS:
            raise ConfigError(f"mu_link_fn '{self.mu_link_fn}' is not supported; choose one of {', '.join(MU_LINKS)}")
        if self.activation not in ("gelu", "relu", "silu"):
            raise ConfigError(f"activation '{self.activation}' is not one of gelu, relu, silu")


@dataclass
class DataConfig:
    """How cells become tokens, and which files make the vocabulary."""

    esm2_mappings: list[str] = field(default_factory=list)  # vocabs/<species>_gene.h5, in order
    special_tokens: list[str] = field(default_factory=lambda: list(SPECIAL_TOKENS))
    aux_cols: list[str] = field(default_factory=lambda: ["assay"])
    gene_col_name: str = "ensembl_id"
    clip_counts: float | None = DEFAULT_CLIP_COUNTS
    normalize_to_scale: float = 0
    gene_order: str = "var_order"  # the official keys: sort_genes (expression_sorted), randomize_genes (random)
    gene_pad_token: str = "[PAD]"
    aux_pad_token: str = "unknown"


_LOSS_KEYS = ("gene_id_loss_weight", "softplus_approx")
_TFX_KEYS = ("likelihood", "attention", "count_head", "gene_head")


def _known(cls, section: dict, keys=None) -> dict:
    names = keys or [f.name for f in dataclasses.fields(cls)]
    return {k: v for k, v in section.items() if k in names and v is not None}


def parse_config(raw: dict[str, Any], source: str = "config.json") -> tuple[ModelConfig, DataConfig]:
    """Read an official (or tfx) config dict; refuse what tfx cannot serve, import nothing."""
    model = raw.get("model")
    if not isinstance(model, dict) or "model_config" not in model:
        raise ConfigError(f"{source}: no model.model_config section; is this a TranscriptFormer checkpoint?")
    target = model.get("_target_")
    if target is not None and target not in MODEL_TARGETS:
        raise ConfigError(f"{source}: model _target_ '{target}' is not a TranscriptFormer model tfx can serve")
    model_type = model.get("model_type", "transcriptformer")
    if model_type != "transcriptformer":
        raise ConfigError(f"{source}: model_type '{model_type}' is not supported (only 'transcriptformer')")
    for name in ("model_config", "loss_config", "data_config"):
        sub_target = (model.get(name) or {}).get("_target_")
        if sub_target is not None and sub_target not in SECTION_TARGETS:
            raise ConfigError(f"{source}: {name}._target_ '{sub_target}' is unknown; tfx never imports from a config")

    mc = dict(model["model_config"])
    mc.update(_known(ModelConfig, model.get("loss_config") or {}, _LOSS_KEYS))
    mc.update(_known(ModelConfig, model.get("tfx") or {}, _TFX_KEYS))
    model_cfg = ModelConfig(**_known(ModelConfig, mc))

    dc = dict(model.get("data_config") or {})
    aux = dc.get("aux_cols")
    dc["aux_cols"] = [] if aux is None else ([c for c in aux.split(",") if c] if isinstance(aux, str) else list(aux))
    dc["gene_order"] = ("expression_sorted" if dc.get("sort_genes") else
                        "random" if dc.get("randomize_genes") else "var_order")
    data_cfg = DataConfig(**_known(DataConfig, dc))
    if not data_cfg.esm2_mappings:
        raise ConfigError(f"{source}: data_config.esm2_mappings lists no gene embedding file")
    return model_cfg, data_cfg


def config_dict(model_cfg: ModelConfig, data_cfg: DataConfig) -> dict[str, Any]:
    """The official layout, readable by the reference package as it is."""
    m = dataclasses.asdict(model_cfg)
    loss = {k: m.pop(k) for k in _LOSS_KEYS}
    tfx = {k: m.pop(k) for k in _TFX_KEYS}
    d = dataclasses.asdict(data_cfg)
    d["aux_cols"] = ",".join(d["aux_cols"]) if d["aux_cols"] else None
    order = d.pop("gene_order")
    d.update(aux_vocab_path=None, esm2_mappings_path=None, pad_zeros=True, pin_memory=True, n_data_workers=0,
             filter_to_vocabs=True, filter_outliers=0.0, sort_genes=order == "expression_sorted",
             randomize_genes=order == "random", min_expressed_genes=0)
    return {
        "model": {
            "_target_": "transcriptformer.model.model.Transcriptformer",
            "data_config": {"_target_": "transcriptformer.data.dataclasses.DataConfig", **d},
            "model_config": {"_target_": "transcriptformer.data.dataclasses.ModelConfig", **m},
            "loss_config": {"_target_": "transcriptformer.data.dataclasses.LossConfig", **loss},
            "tfx": tfx,
        }
    }
