"""Shared fixtures: real data when present, and checkpoints built by the reference package."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# Parallel workers (pytest-xdist) share the cores: each gets its share of threads, set before numpy and
# torch start their pools, and the commands the tests launch inherit it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _WORKERS)))

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
MOUSE = ROOT.parent / "shared" / "data" / "mouse_val.h5ad"


def write_h5ad(path: Path, genes, counts, obs: pd.DataFrame | None = None) -> Path:
    counts = sp.csr_matrix(np.asarray(counts, dtype=np.float32))
    obs = obs if obs is not None else pd.DataFrame(index=[f"cell{i}" for i in range(counts.shape[0])])
    var = pd.DataFrame({"ensembl_id": list(genes)}, index=[f"g{i}" for i in range(len(genes))])
    anndata.AnnData(X=counts, obs=obs, var=var).write_h5ad(path)
    return path


@pytest.fixture(scope="session")
def parity_cells(tmp_path_factory) -> anndata.AnnData:
    """Real mouse cells when present, otherwise synthetic ones: parity is never skipped."""
    if MOUSE.exists():
        return anndata.read_h5ad(MOUSE)
    from tfx.synth import synth_atlas

    atlas = synth_atlas(tmp_path_factory.mktemp("synth"), species=1, cells=48, genes=600, seed=0)
    return anndata.read_h5ad(atlas["species"]["synth_alpha"]["h5ad"])


@pytest.fixture(scope="session")
def parity_data(parity_cells, tmp_path_factory) -> dict:
    """48 real (or synthetic) cells (half with an assay the vocab lacks) plus cells of 0 to 400 genes."""
    rng = np.random.default_rng(7)
    genes = list(parity_cells.var["ensembl_id"])
    vocab_genes = [g for g in genes if rng.random() < 0.85]
    real = parity_cells.X[:48].toarray()
    lengths = [0, 1, 2, 7, 29, 30, 31, 32, 64, 400]
    crafted = np.zeros((len(lengths), len(genes)), dtype=np.float32)
    for row, n in enumerate(lengths):
        cols = rng.choice(len(genes), size=n, replace=False)
        crafted[row, cols] = rng.integers(1, 60, size=n)  # some counts above the clip of 30
    assays = ["MERFISH", "an assay the vocabulary lacks"] * 24 + ["10x 3' v3"] * len(lengths)
    obs = pd.DataFrame(
        {"assay": assays, "cell_type": list(parity_cells.obs["cell_type"].astype(str)[:48]) + ["crafted"] * len(lengths)},
        index=[f"c{i}" for i in range(48 + len(lengths))],
    )
    path = write_h5ad(tmp_path_factory.mktemp("parity") / "cells.h5ad", genes, np.vstack([real, crafted]), obs)
    return {"path": path, "genes": genes, "vocab_genes": vocab_genes}


@pytest.fixture(scope="session", params=["aux_seq31", "noaux_seq127"])
def ref_checkpoint(request, parity_data, tmp_path_factory) -> Path:
    """A random-weight checkpoint that the reference package itself builds and saves."""
    import reference

    aux, seq_len = (True, 31) if request.param == "aux_seq31" else (False, 127)
    out = tmp_path_factory.mktemp(request.param) / "ckpt"
    return reference.build_reference_checkpoint(
        out, {"mus_musculus": parity_data["vocab_genes"]}, seq_len=seq_len, aux=aux, seed=3
    )


def file_tokens(ckpt, path, **reader_options):
    """(tokens, aux ids) of every cell of an h5ad, read as ``ckpt`` reads it (tfx infer's road)."""
    from tfx.data.anndata import CellReader
    from tfx.data.preprocess import preprocessing

    reader = CellReader(path, ckpt.vocab.lookup, aux_vocabs=ckpt.aux_vocabs, **reader_options)
    (chunk,) = reader.chunks(10**9, tokenize=preprocessing(ckpt))
    reader.close()
    return chunk.cells, chunk.aux_ids


def planted(species_offset: float = 0.0, classes: int = 4, per_class: int = 30, seed: int = 0):
    """Cells of 3 species around class centres shared by the species, each species shifted by an offset."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 16)) * 2
    shifts = rng.normal(size=(3, 16)) * species_offset
    labels = np.tile(np.repeat(np.arange(classes), per_class), 3)
    species = np.repeat(np.arange(3), classes * per_class)
    features = centres[labels] + shifts[species] + rng.normal(size=(len(labels), 16))
    return features, np.array([f"type{i}" for i in labels]), np.array([f"sp{i}" for i in species])


@pytest.fixture(scope="session")
def eval_atlas(tmp_path_factory):
    """Two synthetic species and, per species, an embeddings file like `tfx infer` writes (cells reversed,
    so the counts must be matched by cell name): good embeddings planted from the cell types."""
    from tfx.synth import synth_atlas

    root = tmp_path_factory.mktemp("eval")
    summary = synth_atlas(root / "atlas", species=2, cells=200, genes=200, seed=3)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 8)) * 3
    counts, embeddings = [], []
    for name, s in summary["species"].items():
        adata = anndata.read_h5ad(s["h5ad"])[::-1]
        planted_emb = centres[adata.obs["cell_type"].cat.codes] + rng.normal(size=(adata.n_obs, 8))
        path = root / f"{name}_emb.h5ad"
        anndata.AnnData(obs=adata.obs, obsm={"embeddings": planted_emb.astype(np.float32)}).write_h5ad(path)
        counts.append(s["h5ad"])
        embeddings.append(path)
    return {"root": root, "counts": counts, "embeddings": embeddings}


@pytest.fixture(scope="module")
def one_blas_thread():
    """Small matrices (modules opt in with usefixtures): on a shared machine, BLAS threads cost far more than they give."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


TYPES = ["neuron", "glia", "immune"]


def _train_species(tmp, name, n_genes, n_cells, seed, dim=16):
    """A gene file and cells of three types, each type expressing its own block of genes."""
    from tfx.vocab import write_gene_embeddings

    rng = np.random.default_rng(seed)
    genes = [f"ENS{name.upper()}{i:011d}" for i in range(n_genes)]
    write_gene_embeddings(tmp / f"{name}_gene.h5", genes, rng.normal(size=(n_genes, dim)).astype(np.float32))
    types = rng.choice(len(TYPES), n_cells)
    block = n_genes // len(TYPES)
    rate = np.full((n_cells, n_genes), 0.02)
    for c, t in enumerate(types):
        rate[c, t * block : (t + 1) * block] = 0.5
    x = (rng.random((n_cells, n_genes)) < rate) * rng.integers(1, 12, (n_cells, n_genes))
    obs = pd.DataFrame({"assay": "10x 3' v3", "cell_type": [TYPES[t] for t in types]},
                       index=[f"{name}{i}" for i in range(n_cells)])
    write_h5ad(tmp / f"{name}.h5ad", genes, x[: n_cells * 3 // 4], obs.iloc[: n_cells * 3 // 4])
    write_h5ad(tmp / f"{name}_val.h5ad", genes, x[n_cells * 3 // 4 :], obs.iloc[n_cells * 3 // 4 :])


def _species_files(tmp, name):
    """(gene file, training cells, validation cells) that ``_train_species`` wrote."""
    return tmp / f"{name}_gene.h5", tmp / f"{name}.h5ad", tmp / f"{name}_val.h5ad"


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The directory ``build(dir)`` fills, built once per test run: parallel workers (pytest-xdist)
    share it, the first builds while the others wait, so a slow fixture costs its time once."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's own directory either way
    path, done = root / "built_once" / name, root / "built_once" / f"{name}.done"
    path.parent.mkdir(exist_ok=True)
    with FileLock(f"{path}.lock"):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)  # what a failed build left
            path.mkdir()
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def atlas(tmp_path_factory):
    """Two species of three cell types each (training and validation h5ad, gene files), for training tests."""
    def build(tmp):
        _train_species(tmp, "alpha", 150, 320, 0)
        _train_species(tmp, "beta", 120, 240, 1)

    tmp = built_once(tmp_path_factory, "train_data", build)
    return {name: _species_files(tmp, name) for name in ("alpha", "beta")}


def train_overrides(atlas, out, steps, *extra):
    """pretrain/tiny on species alpha of ``atlas``, a little wider, for ``steps`` steps into ``out``."""
    emb, cells, val = atlas["alpha"]
    return ["data=h5ad", f"data.files=[{cells}]", f"data.val_files=[{val}]", f"vocab.embeddings=[{emb}]",
            f"output_dir={out}", f"trainer.max_steps={steps}", "model.embed_dim=32", "model.model_dim=64",
            "data.token_budget=2048", "trainer.log_every_n_steps=1", *extra]


def train_metrics(run_dir):
    """Every start's CSV, in order (a resumed run adds one)."""
    files = sorted((run_dir / "logs").glob("*/metrics.csv"), key=lambda p: int(p.parent.name))
    return pd.concat([pd.read_csv(f) for f in files], ignore_index=True)


@pytest.fixture(scope="session")
def pretrained(atlas, tmp_path_factory):
    """One tiny pretraining run (60 steps), shared by every test that needs a trained model."""
    from tfx.recipe import compose
    from tfx.train.run import train

    def build(root):
        train(compose("pretrain/tiny", train_overrides(atlas, root / "run", 60, "trainer.val_check_interval=30")))

    return built_once(tmp_path_factory, "pretrain", build) / "run"


def tiny_model(vocab_size: int = 40, emb_dim: int = 12, seed: int = 0, **cfg):
    """A small random TranscriptFormer (special ids: pad 1, start 2, end 3) and its config."""
    import torch

    from tfx.model import ModelConfig, SpecialIds, TranscriptFormer

    torch.manual_seed(seed)
    defaults = dict(embed_dim=16, num_heads=2, num_layers=2, model_dim=32, seq_len=15, dropout=0.0,
                    gene_head_hidden_dim=24, attention="eager")
    model_cfg = ModelConfig(**{**defaults, **cfg})
    table = torch.randn(vocab_size, emb_dim)
    aux = {"assay": {"unknown": 0, "a": 1, "b": 2}}
    return TranscriptFormer(model_cfg, table, SpecialIds(pad=1, start=2, end=3), aux, max_counts=30)


def random_cells(n: int, vocab_size: int = 40, max_len: int = 15, seed: int = 0):
    """Cells of 0..max_len distinct genes (ids >= 7, past the special tokens) with counts 1..40."""
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n):
        k = int(rng.integers(0, max_len + 1))
        ids = rng.choice(np.arange(7, vocab_size), size=k, replace=False)
        cells.append((ids.astype(np.int64), np.minimum(rng.integers(1, 40, size=k), 30).astype(np.float32)))
    return cells
