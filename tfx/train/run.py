"""`tfx train RECIPE [overrides]`: compose a Hydra recipe, build everything, fit, export.

A run directory holds ``config.yaml`` (the composed recipe), ``checkpoint_template/`` (config.json
and vocabs/ of the model being trained), ``checkpoints/`` (Lightning / DeepSpeed checkpoints),
``logs/<n>/metrics.csv`` (one per start or resume, and wandb's offline run when enabled) and, when the run ends,
``export/``: the inference checkpoint in the official layout.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from tfx.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from tfx.checkpoint.io import build_model
from tfx.model.config import ConfigError, DataConfig, ModelConfig
from tfx.vocab import GeneVocab
from tfx.vocab.aux import official_assay_vocab

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = ROOT / "conf"
RECIPES_DIR = ROOT / "recipes"


class RecipeError(ValueError):
    pass


def recipe_path(recipe: str) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path.resolve()
    path = RECIPES_DIR / f"{recipe.removeprefix('recipes/').removesuffix('.yaml')}.yaml"
    if not path.exists():
        known = sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml"))
        raise RecipeError(f"unknown recipe '{recipe}' (known: {', '.join(known)})")
    return path


def compose(recipe: str, overrides: list[str]) -> DictConfig:
    """Real Hydra composition: the recipe's defaults list pulls groups from conf/."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    path = recipe_path(recipe)
    try:
        with initialize_config_dir(config_dir=str(path.parent), version_base=None):
            cfg = hydra_compose(config_name=path.stem,
                                overrides=[*overrides, f"hydra.searchpath=[file://{CONF_DIR}]"])
    except HydraException as err:
        raise RecipeError(f"{path}: {err}") from err
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        raise RecipeError(f"{path}: set {', '.join(sorted(missing))} (e.g. {sorted(missing)[0]}=...)")
    return cfg


def initial_checkpoint(cfg: DictConfig) -> Checkpoint:
    """The model training starts from: a checkpoint (official ones included) or random weights."""
    from tfx.checkpoint.surgery import add_species

    if cfg.get("init"):
        ckpt = load_checkpoint(cfg.init)
        ckpt.model.train()
    else:
        files = list(cfg.vocab.embeddings)
        if not files:
            raise RecipeError("vocab.embeddings lists no gene embedding file; set vocab.embeddings=[A_gene.h5,...]")
        try:
            model_cfg = ModelConfig(**OmegaConf.to_container(cfg.model))
        except (TypeError, ConfigError) as err:
            raise RecipeError(f"model config: {err}") from err
        data_cfg = DataConfig(esm2_mappings=[os.path.basename(f) for f in files],
                              special_tokens=list(cfg.vocab.special_tokens), aux_cols=list(cfg.vocab.aux_cols),
                              clip_counts=cfg.data.clip_counts,
                              normalize_to_scale=cfg.data.get("normalize_to_scale", 0) or 0)
        vocab, table = GeneVocab.from_files(data_cfg.special_tokens, files)
        aux = {col: official_assay_vocab() for col in data_cfg.aux_cols}
        import torch

        model = build_model(model_cfg, data_cfg, vocab, torch.as_tensor(table), aux)
        ckpt = Checkpoint(model, vocab, aux, model_cfg, data_cfg)
    if cfg.vocab.get("add"):
        ckpt = add_species(ckpt, list(cfg.vocab.add))
    return ckpt


def _rank() -> tuple[int, int]:
    env = os.environ
    rank = int(env.get("RANK", env.get("SLURM_PROCID", 0)))
    world = int(env.get("WORLD_SIZE", env.get("SLURM_NTASKS", 1)))
    return rank, world


def train(cfg: DictConfig) -> Path:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from tfx.train.callbacks import Throughput
    from tfx.train.datamodule import RecipeData
    from tfx.train.export import export_run, write_template
    from tfx.train.module import OptimConfig, PretrainModule
    from tfx.train.sources import build_sources, build_task
    from tfx.train.strategies import build_strategy

    out = Path(cfg.output_dir)
    L.seed_everything(int(cfg.seed), workers=True)
    ckpt = initial_checkpoint(cfg)  # every config and vocabulary error surfaces here, before compute
    tcfg = cfg.trainer
    ckpt.model.transformer_encoder.checkpointing = bool(tcfg.get("activation_checkpointing", False))
    strategy = build_strategy(cfg.strategy.name, tcfg.accelerator)

    task = build_task(cfg, ckpt)
    data = RecipeData(cfg, ckpt, task)
    has_val = bool(cfg.data.get("val_files") or cfg.data.get("val_shards"))
    optim = OptimConfig(**{k: v for k, v in OmegaConf.to_container(cfg.optim).items() if v is not None})
    optim.total_steps = optim.total_steps or int(tcfg.max_steps)
    freeze(ckpt.model, list(cfg.get("freeze") or []))
    if cfg.objective == "finetune":
        from tfx.train.module import TaskModule, freeze_backbone

        freeze_backbone(ckpt.model, cfg.task.backbone, int(cfg.task.get("trainable_layers", 2)))
        module = TaskModule(ckpt.model, task, optim)
    else:
        module = PretrainModule(ckpt.model, optim)

    out.mkdir(parents=True, exist_ok=True)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0 and _rank()[0] == 0:
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
        write_template(ckpt, out / "checkpoint_template", task)

    # one CSV per (re)start: logs/0/metrics.csv, logs/1/metrics.csv, ... (a resume keeps the history)
    attempt = len([p for p in (out / "logs").glob("*/metrics.csv")])
    loggers = [CSVLogger(str(out), name="logs", version=str(attempt))]
    if cfg.logger.name == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        os.environ.setdefault("WANDB_MODE", cfg.logger.get("mode", "offline"))
        loggers.append(WandbLogger(project=cfg.logger.project, save_dir=str(out / "logs")))
    checkpoints = ModelCheckpoint(dirpath=str(out / "checkpoints"), every_n_train_steps=int(tcfg.checkpoint_every_n_steps),
                                  save_last=True, save_top_k=1)
    trainer = L.Trainer(
        accelerator=tcfg.accelerator, devices=tcfg.devices, num_nodes=int(tcfg.num_nodes), strategy=strategy,
        precision=str(tcfg.precision), max_steps=int(tcfg.max_steps), gradient_clip_val=tcfg.gradient_clip_val,
        accumulate_grad_batches=int(tcfg.accumulate_grad_batches), log_every_n_steps=int(tcfg.log_every_n_steps),
        val_check_interval=int(tcfg.val_check_interval) if has_val else None,
        limit_val_batches=int(tcfg.limit_val_batches) if has_val else 0,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=loggers,
        callbacks=[checkpoints, Throughput(tcfg.get("peak_tflops"))],
        default_root_dir=str(out), use_distributed_sampler=False, enable_model_summary=False,
    )
    resume = _resume_path(cfg, out)
    # held-out likelihood per validation set before and after a continuation (rank 0 alone)
    report_sets = None
    if cfg.get("init") and has_val and cfg.objective == "pretrain" and not resume and _rank()[0] == 0:
        report_sets = build_sources(cfg, ckpt, 0, 1)[1]
    before = held_out(ckpt.model, report_sets) if report_sets else None
    trainer.fit(module, datamodule=data, ckpt_path=resume)
    final = out / "checkpoints" / "final.ckpt"
    trainer.save_checkpoint(str(final), weights_only=False)  # collective under DeepSpeed: every rank writes its shard
    if trainer.is_global_zero:
        export_run(out, out / "export", final)
        log.info("exported the inference checkpoint to %s", out / "export")
        if before is not None:
            after = held_out(load_checkpoint(out / "export").model, report_sets)
            _write_report(out / "continuation_report.json", before, after)
    trainer.strategy.barrier()
    return out / "export"


def freeze(model, prefixes: list[str]) -> None:
    """Keep parameters whose names start with one of ``prefixes`` fixed (continuation)."""
    for name, p in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            p.requires_grad = False


def held_out(model, val_sets: dict, max_batches: int = 8) -> dict[str, dict[str, float]]:
    """Mean held-out losses per validation set (species): count NLL and next-gene cross-entropy."""
    import torch

    model = model.eval()
    device = next(model.parameters()).device
    result = {}
    with torch.no_grad():
        for name, source in val_sets.items():
            sums, n = {}, 0
            for i, batch in zip(range(max_batches), source):
                batch = batch.to(device)
                losses = model.losses(model(batch), batch)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n += 1
            result[name] = {k: v / max(n, 1) for k, v in sums.items()}
    model.train()
    return result


def _write_report(path: Path, before: dict, after: dict) -> None:
    import json

    report = {name: {"before": before[name], "after": after[name]} for name in before}
    path.write_text(json.dumps(report, indent=2))
    for name, r in report.items():
        log.info("held-out %s: count NLL %.4f -> %.4f, gene CE %.4f -> %.4f", name, r["before"]["count"],
                 r["after"]["count"], r["before"].get("gene_id", float("nan")), r["after"].get("gene_id", float("nan")))


def _resume_path(cfg: DictConfig, out: Path) -> str | None:
    resume = cfg.get("resume")
    if not resume:
        return None
    if resume == "auto":
        last = out / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    if not Path(resume).exists():
        raise RecipeError(f"resume={resume}: no such checkpoint")
    return str(resume)


def train_from_cli(recipe: str, overrides: list[str]) -> Path:
    try:
        cfg = compose(recipe, overrides)
        return train(cfg)
    except (RecipeError, CheckpointError, ConfigError) as err:
        raise SystemExit(f"tfx train: error: {err}") from None
