"""The parity harness: random-weight checkpoints built and run by the reference package itself.

The published `transcriptformer` 0.6.1 (installed --no-deps with what it imports) builds the
model, initialises it at random and saves it in the official layout; the same module runs its
own inference on h5ad files so tfx can be compared number for number. Used by the parity tests
and the benchmarks.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

OFFICIAL_SPECIAL_TOKENS = ["unknown", "[PAD]", "[START]", "[END]", "[RD]", "[CELL]", "[MASK]"]
# The order the reference's embedding surgery rebuilds the special tokens in.
SURGERY_SPECIAL_TOKENS = ["unknown", "[START]", "[END]", "[RD]", "[CELL]", "[PAD]", "[MASK]"]
ASSAYS = {"unknown": 0, "10x 3' v3": 1, "MERFISH": 2, "Smart-seq2": 3}


def _reference_cfg(ckpt_dir: Path, **inference):
    """The reference CLI's configuration for a checkpoint directory (fp32, CPU, no compile)."""
    from omegaconf import OmegaConf
    import transcriptformer.cli as ref_cli

    cfg = OmegaConf.load(Path(ref_cli.__file__).parent / "conf" / "inference_config.yaml")
    cfg = OmegaConf.merge(OmegaConf.create(json.loads((ckpt_dir / "config.json").read_text())), cfg)
    cfg.model.checkpoint_path = str(ckpt_dir)
    cfg.model.inference_config.load_checkpoint = str(ckpt_dir / "model_weights.pt")
    cfg.model.data_config.aux_vocab_path = str(ckpt_dir / "vocabs")
    cfg.model.data_config.esm2_mappings_path = str(ckpt_dir / "vocabs")
    cfg.model.data_config.clip_counts = 30
    cfg.model.data_config.use_raw = None
    cfg.model.model_config.compile_block_mask = False
    cfg.model.inference_config.precision = "32"
    cfg.model.inference_config.device = "cpu"
    for key, value in inference.items():
        cfg.model.inference_config[key] = value
    return cfg


def build_reference_checkpoint(
    out_dir: str | os.PathLike,
    species_genes: dict[str, list[str]],
    *,
    emb_dim: int = 24,
    embed_dim: int = 32,
    num_heads: int = 4,
    num_layers: int = 2,
    model_dim: int = 48,
    seq_len: int = 31,
    aux: bool = True,
    seed: int = 0,
    special_tokens: list[str] | None = None,
    mu_link_fn: str = "softmax",
) -> Path:
    """Write vocabs with the reference's own h5 writer, build its model at random, save it."""
    from transcriptformer.model.model import Transcriptformer
    from transcriptformer.tokenizer.vocab import load_vocabs_and_embeddings
    from transcriptformer.utils.utils import save_as_hdf5

    out = Path(out_dir)
    (out / "vocabs").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for species, genes in species_genes.items():
        save_as_hdf5({g: rng.normal(size=emb_dim).astype(np.float32) for g in genes},
                     str(out / "vocabs" / f"{species}_gene.h5"))
        files.append(f"{species}_gene.h5")
    (out / "vocabs" / "assay_vocab.json").write_text(json.dumps(ASSAYS))
    config = {
        "model": {
            "_target_": "transcriptformer.model.model.Transcriptformer",
            "data_config": {
                "_target_": "transcriptformer.data.dataclasses.DataConfig",
                "aux_vocab_path": None, "pin_memory": True, "aux_cols": "assay" if aux else None,
                "gene_col_name": "ensembl_id", "clip_counts": None, "filter_to_vocabs": None,
                "filter_outliers": None, "pad_zeros": True, "normalize_to_scale": 0, "n_data_workers": 1,
                "sort_genes": None, "randomize_genes": None, "min_expressed_genes": None,
                "gene_pad_token": "[PAD]", "aux_pad_token": "unknown", "esm2_mappings_path": None,
                "esm2_mappings": files,
                "special_tokens": special_tokens or OFFICIAL_SPECIAL_TOKENS,
            },
            "model_config": {
                "_target_": "transcriptformer.data.dataclasses.ModelConfig",
                "log_counts_eps": 1e-06, "num_heads": num_heads, "num_layers": num_layers,
                "model_dim": model_dim, "embed_dim": embed_dim, "dropout": 0.1, "seq_len": seq_len,
                "aux_len": 1, "block_len": 128, "activation": "gelu", "fw_bias": False, "softcap": 10,
                "attn_bias": False, "mu_link_fn": mu_link_fn, "gene_head_hidden_dim": 2 * embed_dim,
            },
            "loss_config": {"_target_": "transcriptformer.data.dataclasses.LossConfig",
                            "gene_id_loss_weight": 1.0, "softplus_approx": True},
        }
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))

    cfg = _reference_cfg(out)
    (gene_vocab, aux_vocab), emb_matrix = load_vocabs_and_embeddings(cfg)
    torch.manual_seed(seed)
    model = Transcriptformer(
        data_config=cfg.model.data_config, model_config=cfg.model.model_config,
        loss_config=cfg.model.loss_config, inference_config=cfg.model.inference_config,
        gene_vocab_dict=gene_vocab, aux_vocab_dict=aux_vocab, emb_matrix=emb_matrix,
    )
    with torch.no_grad():  # default LayerNorms are 1/0: randomise them so parity covers them
        for name, p in model.named_parameters():
            if "norm" in name or "layers.2" in name or name == "mu.gene_embedding.weight":
                p.add_(0.1 * torch.randn_like(p))
    torch.save(model.state_dict(), out / "model_weights.pt")
    return out


@contextmanager
def _in_dir(path: Path):
    old = os.getcwd()
    path.mkdir(parents=True, exist_ok=True)
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_reference(ckpt_dir, h5ad, *, emb_type="cell", output_keys=("embeddings", "llh"), batch_size=8,
                  pretrained_embedding=None, workdir=None, model_type="transcriptformer"):
    """The reference's own `run_inference` (its CLI's path); returns its output AnnData.
    ``model_type``: as its CLI's --model-type (``esm2ce``: its ESM2-CE baseline)."""
    from transcriptformer.model.inference import run_inference

    ckpt_dir = Path(ckpt_dir)
    cfg = _reference_cfg(ckpt_dir, emb_type=emb_type, output_keys=list(output_keys), batch_size=batch_size)
    cfg.model.model_type = model_type
    if pretrained_embedding:
        # as its CLI does: one path as a string (a config list is not taken as a list there)
        paths = [str(p) for p in pretrained_embedding]
        cfg.model.inference_config.pretrained_embedding = paths[0] if len(paths) == 1 else paths
    with _in_dir(Path(workdir or ckpt_dir / "reference_run")):  # it writes CSV logs to ./logs
        return run_inference(cfg, data_files=[str(h5ad)])


def reference_forward(ckpt_dir, h5ad, batch_size=8) -> dict[str, np.ndarray]:
    """mu, gene logits and masks of the reference's forward (embedding mode, as its inference)."""
    from transcriptformer.data.dataloader import AnnDataset
    from transcriptformer.model.model import Transcriptformer
    from transcriptformer.tokenizer.vocab import load_vocabs_and_embeddings

    ckpt_dir = Path(ckpt_dir)
    cfg = _reference_cfg(ckpt_dir)
    (gene_vocab, aux_vocab), emb_matrix = load_vocabs_and_embeddings(cfg)
    model = Transcriptformer(
        data_config=cfg.model.data_config, model_config=cfg.model.model_config,
        loss_config=cfg.model.loss_config, inference_config=cfg.model.inference_config,
        gene_vocab_dict=gene_vocab, aux_vocab_dict=aux_vocab, emb_matrix=emb_matrix,
    )
    model.load_state_dict(torch.load(ckpt_dir / "model_weights.pt", weights_only=True))
    model.eval()
    dc = cfg.model.data_config
    data = AnnDataset([str(h5ad)], gene_vocab, aux_vocab=aux_vocab, max_len=cfg.model.model_config.seq_len,
                      pad_zeros=True, clip_counts=30, gene_col_name=dc.gene_col_name, filter_to_vocab=True,
                      obs_keys=None)
    out = {"mu": [], "gene_logit": [], "mask": [], "gene_token_indices": []}
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            batch = AnnDataset.collate_fn([data[j] for j in range(i, min(i + batch_size, len(data)))])
            res = model.forward(batch, embed=True)
            out["mu"].append(res["mu"])
            out["gene_logit"].append(res["gene_logit"])
            out["mask"].append(res["mask"])
            out["gene_token_indices"].append(batch.gene_token_indices)
    return {k: torch.cat(v).numpy() for k, v in out.items()}
