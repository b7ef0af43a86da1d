"""One road from raw counts to model input: every consumer reads a cell as the checkpoint says
(gene order, truncation, normalisation, clipping, aux tokens), and what cannot be read that way is
refused in one line."""

from __future__ import annotations

import anndata
import numpy as np
import pandas as pd
import pytest
import torch

import tfx
from conftest import write_h5ad
from teacher import build_teacher
from tfx.checkpoint import load_checkpoint
from tfx.cli import main
from tfx.data.anndata import CellReader
from tfx.data.shards import write_shards
from tfx.generate.score import score_cells
from tfx.model.transcriptformer import TranscriptFormer
from tfx.recipe import build, compose

SPECIES = "synth_alpha"
READS = {"normalize_to_scale": 50.0, "clip_counts": 6.0}  # both matter: most counts change


@pytest.fixture(scope="module")
def normalised(tmp_path_factory):
    """A checkpoint trained on counts scaled to 50 per cell and clipped at 6 (seq_len 32), and 24
    cells of its species, some longer than seq_len, with versioned ids and a gene it lacks."""
    root = tmp_path_factory.mktemp("contract")
    ckpt = build_teacher(root / "ckpt", n_genes=80, seq_len=32, data=READS)
    rng = np.random.default_rng(0)
    genes = [f"{SPECIES.upper()}_{i:05d}.{i % 3}" for i in range(80)] + ["NOT_A_GENE"]
    counts = (rng.random((24, 81)) < rng.uniform(0.1, 0.6, (24, 1))) * rng.integers(1, 40, (24, 81))
    counts[:, 5] += 1  # every cell has a gene
    obs = pd.DataFrame({"assay": rng.choice(["10x 3' v3", "MERFISH", "an assay the vocabulary lacks"], 24),
                        "cell_type": rng.choice(["a", "b"], 24)}, index=[f"c{i}" for i in range(24)])
    data = write_h5ad(root / "cells.h5ad", genes, counts, obs)
    return {"ckpt": ckpt, "data": data, "root": root}


def _cells_of(batch, pad: int) -> set:
    """Each padded row of a batch as (gene ids, counts, aux ids): what the model reads of the cell."""
    rows = set()
    for r in range(batch.gene_ids.shape[0]):
        genes = batch.gene_ids[r] != pad
        aux = () if batch.aux_ids is None else tuple(batch.aux_ids[r].tolist())
        rows.add((tuple(batch.gene_ids[r][genes].tolist()), batch.counts[r][genes].numpy().tobytes(), aux))
    return rows


class _ModelInputs:
    """Every batch any TranscriptFormer reads while open (a forward pre-hook on all modules)."""

    def __enter__(self):
        self.batches = []
        self._hook = torch.nn.modules.module.register_module_forward_pre_hook(
            lambda module, args: self.batches.append(args[0]) if isinstance(module, TranscriptFormer) else None)
        return self

    def __exit__(self, *exc):
        self._hook.remove()


def _training_cells(normalised, source: list[str], n_batches: int) -> set:
    run = build(compose("continue/tiny", [f"init={normalised['ckpt']}", f"output_dir={normalised['root'] / 'run'}",
                                          "data.val_shards=null", "data.token_budget=256", "data.shuffle_buffer=8",
                                          *source]))
    train, _ = run.sources(0, 1)
    stream, seen = iter(train), set()
    for _ in range(n_batches):
        seen |= _cells_of(next(stream), run.checkpoint.vocab.pad)
    return seen


def test_five_roads_read_a_cell_identically(normalised, tmp_path):
    ckpt = load_checkpoint(normalised["ckpt"])
    pad = ckpt.vocab.pad
    roads = {}
    roads["h5ad training"] = _training_cells(normalised, ["data=h5ad", f"data.files=[{normalised['data']}]"], 30)
    shards = write_shards([normalised["data"]], SPECIES, tmp_path / "shards", cells_per_shard=8, processes=1)
    roads["shard training"] = _training_cells(normalised, [f"data.shards={shards['output']}"], 60)
    with _ModelInputs() as seen:
        assert main(["infer", "--checkpoint", str(normalised["ckpt"]), "--data", str(normalised["data"]),
                     "--output", str(tmp_path / "emb.h5ad"), "--device", "cpu"]) == 0
    roads["tfx infer"] = set().union(*(_cells_of(b, pad) for b in seen.batches))
    with _ModelInputs() as seen:
        tfx.embed(anndata.read_h5ad(normalised["data"]), tfx.load(normalised["ckpt"]), device="cpu")
    roads["tfx.embed"] = set().union(*(_cells_of(b, pad) for b in seen.batches))

    reader = CellReader(normalised["data"], ckpt.vocab.lookup)  # raw counts in var order, as a user holds them
    raw = [cell for _, chunk in reader.iter_chunks() for cell in chunk]
    reader.close()
    by_assay = {}
    for cell, assay in zip(raw, anndata.read_h5ad(normalised["data"]).obs["assay"]):
        by_assay.setdefault(assay if assay in ckpt.aux_vocabs["assay"] else None, []).append(cell)
    scored = set()
    for assay, cells in by_assay.items():
        with _ModelInputs() as seen:
            score_cells(ckpt, cells, assay=assay)
        scored |= set().union(*(_cells_of(b, pad) for b in seen.batches))
    roads["generate.score"] = scored

    assert len(roads["tfx infer"]) == 24
    for name, cells in roads.items():
        assert cells == roads["tfx infer"], name
    lengths = {len(ids) for ids, _, _ in roads["tfx infer"]}
    assert max(lengths) == 32  # some cells were truncated at seq_len
    assert any(np.frombuffer(c, np.float32).max() == READS["clip_counts"] for _, c, _ in roads["tfx infer"])
    assert all(np.frombuffer(c, np.float32).sum() <= READS["normalize_to_scale"] + 1e-3 for _, c, _ in roads["tfx infer"])


def test_scoring_reads_counts_as_the_model_was_trained(normalised, tmp_path):
    """generate.score's NLL is tfx infer's, which reads normalised counts (raw counts before)."""
    out = tmp_path / "nll.h5ad"
    assert main(["infer", "--checkpoint", str(normalised["ckpt"]), "--data", str(normalised["data"]), "--output",
                 str(out), "--outputs", "nll", "--device", "cpu"]) == 0
    ckpt = load_checkpoint(normalised["ckpt"])
    reader = CellReader(normalised["data"], ckpt.vocab.lookup)
    (_, cells), = reader.iter_chunks()
    reader.close()
    obs = anndata.read_h5ad(out).obs
    for assay in obs["assay"].unique():
        mine = (obs["assay"] == assay).to_numpy()
        known = assay if assay in ckpt.aux_vocabs["assay"] else None
        nll = score_cells(ckpt, [c for c, m in zip(cells, mine) if m], assay=known)
        np.testing.assert_allclose(nll, obs["nll"].to_numpy()[mine], rtol=1e-5)


@pytest.mark.parametrize("command", [["generate", "--n-cells", "2", "--output", "{tmp}/g.h5ad"],
                                     ["prompt", "next", "--prompt", "SYNTH_ALPHA_00001:3"]])
def test_sampling_and_prompting_refuse_a_model_of_normalised_counts(normalised, tmp_path, capsys, command):
    """A count sampled or given at one position cannot be scaled by a total the cell does not have yet."""
    argv = [a.format(tmp=tmp_path) for a in command]
    code = main([*argv, "--checkpoint", str(normalised["ckpt"]), "--species", SPECIES])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "normalised to a total of 50" in err[0] and "train one with normalize_to_scale 0" in err[0]
    assert not (tmp_path / "g.h5ad").exists()
