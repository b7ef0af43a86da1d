"""tfx against the reference package on checkpoints the reference built: the correctness anchor.

Two checkpoints (with the assay token and seq_len 31, so most real cells are longer than
seq_len; without it and seq_len 127) and cells of 0 to 400 expressed genes. Max relative error
(max |diff| / max |reference|) at most 1e-5 in fp32.
"""

from __future__ import annotations

import json
import shutil

import anndata
import numpy as np
import pytest
import torch

import reference
from conftest import file_tokens
from parity import max_rel_error
from tfx.checkpoint import load_checkpoint
from tfx.cli import main
from tfx.tokenize import collate

TOL = 1e-5


@pytest.fixture(scope="module")
def reference_cell_run(ref_checkpoint, parity_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("ref_cell")
    return reference.run_reference(ref_checkpoint, parity_data["path"], output_keys=["embeddings", "llh", "gene_llh"],
                                   workdir=work)


def test_cell_embeddings_and_llh_match_reference(ref_checkpoint, parity_data, reference_cell_run, tmp_path):
    out = tmp_path / "out.h5ad"
    assert main(["infer", "--checkpoint", str(ref_checkpoint), "--data", str(parity_data["path"]),
                 "--output", str(out), "--outputs", "embeddings,llh,gene_llh", "--device", "cpu"]) == 0
    ours = anndata.read_h5ad(out)
    ref = reference_cell_run
    assert ours.obsm["embeddings"].dtype == np.float32
    assert list(ours.obs.index) == list(anndata.read_h5ad(parity_data["path"]).obs.index)
    assert max_rel_error(ours.obsm["embeddings"], ref.obsm["embeddings"]) <= TOL
    ref_llh = ref.uns["llh"]["llh"].to_numpy()
    assert np.isnan(ref_llh[48])  # the reference's llh of a cell without genes; ours agrees below
    assert max_rel_error(ours.obs["llh"].to_numpy(), ref_llh) <= TOL
    # gene_llh: the reference's cells x seq_len layout, 0 past each cell's genes; its mean per cell in obs
    ref_gene = ref.obsm["gene_llh"]
    assert ours.obsm["gene_llh"].shape == ref_gene.shape
    assert max_rel_error(ours.obsm["gene_llh"], ref_gene) <= TOL
    genes = np.array([(ref_gene[i] != 0).sum() for i in range(len(ref_gene))])
    with np.errstate(invalid="ignore"):
        assert max_rel_error(ours.obs["gene_llh"].to_numpy(), ref_gene.sum(axis=1) / genes) <= TOL
    # obs is copied whole
    assert (ours.obs["cell_type"].astype(str).to_numpy() == ref.obs["cell_type"].astype(str).to_numpy()).all()


def test_contextual_gene_embeddings_match_reference(ref_checkpoint, parity_data, tmp_path):
    ref = reference.run_reference(ref_checkpoint, parity_data["path"], emb_type="cge",
                                  output_keys=["embeddings"], workdir=tmp_path / "ref")
    out = tmp_path / "cge.h5ad"
    assert main(["infer", "--checkpoint", str(ref_checkpoint), "--data", str(parity_data["path"]),
                 "--output", str(out), "--emb-type", "cge", "--device", "cpu"]) == 0
    ours = anndata.read_h5ad(out)
    np.testing.assert_array_equal(ours.uns["cge_gene_names"].astype(str), ref.uns["cge_gene_names"].astype(str))
    np.testing.assert_array_equal(ours.uns["cge_cell_indices"], ref.uns["cge_cell_indices"])
    assert max_rel_error(ours.uns["cge_embeddings"], ref.uns["cge_embeddings"]) <= TOL


@pytest.mark.parametrize("attention", ["eager", "flex"])
def test_mu_and_gene_logits_match_reference(ref_checkpoint, parity_data, attention):
    ref = reference.reference_forward(ref_checkpoint, parity_data["path"])
    ckpt = load_checkpoint(ref_checkpoint, attention=attention)
    seq_len = ckpt.model_cfg.seq_len
    cells, aux = file_tokens(ckpt, parity_data["path"])
    # the tokens are the reference's: same genes, order, truncation and clipped counts
    for i, (ids, _) in enumerate(cells):
        np.testing.assert_array_equal(ids, ref["gene_token_indices"][i, : len(ids)])
        assert (ref["gene_token_indices"][i, len(ids):] == ckpt.vocab.pad).all()
    batch = collate(cells, ckpt.vocab.pad, seq_len, aux)
    with torch.no_grad():
        out = ckpt.model(batch, embed=True)
    length = batch.gene_ids.shape[1]
    valid = ~ref["mask"][:, :length]
    assert max_rel_error(out.mu.numpy()[valid], ref["mu"][:, :length][valid]) <= TOL
    assert max_rel_error(out.gene_logits.numpy()[valid], ref["gene_logit"][:, :length][valid]) <= TOL


@pytest.fixture(scope="module", params=["exp", "softplus"])
def causal_checkpoint(request, parity_data, tmp_path_factory):
    """A checkpoint with a per-position count link, built and saved by the reference package."""
    out = tmp_path_factory.mktemp(f"causal_{request.param}") / "ckpt"
    return reference.build_reference_checkpoint(out, {"mus_musculus": parity_data["vocab_genes"]}, seq_len=31,
                                                seed=5, mu_link_fn=request.param)


def test_causal_count_heads_match_reference(causal_checkpoint, parity_data, tmp_path):
    ref = reference.reference_forward(causal_checkpoint, parity_data["path"])
    ckpt = load_checkpoint(causal_checkpoint, attention="eager")
    assert ckpt.model.causal_counts
    cells, aux = file_tokens(ckpt, parity_data["path"])
    batch = collate(cells, ckpt.vocab.pad, ckpt.model_cfg.seq_len, aux)
    with torch.no_grad():
        out = ckpt.model(batch, embed=True)
    valid = ~ref["mask"][:, : batch.gene_ids.shape[1]]
    assert max_rel_error(out.mu.numpy()[valid], ref["mu"][:, : batch.gene_ids.shape[1]][valid]) <= TOL
    # whole-file llh through both CLIs' paths
    ref_run = reference.run_reference(causal_checkpoint, parity_data["path"], output_keys=["llh"],
                                      workdir=tmp_path / "ref")
    out_path = tmp_path / "out.h5ad"
    assert main(["infer", "--checkpoint", str(causal_checkpoint), "--data", str(parity_data["path"]),
                 "--output", str(out_path), "--outputs", "llh", "--device", "cpu"]) == 0
    assert max_rel_error(anndata.read_h5ad(out_path).obs["llh"].to_numpy(), ref_run.uns["llh"]["llh"].to_numpy()) <= TOL


def test_causal_count_head_rate_ignores_later_genes(causal_checkpoint):
    """Gene j's rate depends on the cell up to gene j: truncating the cell after j changes nothing."""
    ckpt = load_checkpoint(causal_checkpoint, attention="eager")
    rng = np.random.default_rng(0)
    ids = rng.choice(np.arange(len(ckpt.vocab.special_tokens), len(ckpt.vocab)), size=20, replace=False)
    counts = rng.integers(1, 9, size=20).astype(np.float32)
    aux = np.array([[1]]) if ckpt.aux_vocabs else None
    with torch.no_grad():
        whole = ckpt.model(collate([(ids, counts)], ckpt.vocab.pad, 31, aux)).mu[0, :20]
        head = ckpt.model(collate([(ids[:8], counts[:8])], ckpt.vocab.pad, 31, aux)).mu[0, :8]
    torch.testing.assert_close(whole[:8], head, rtol=1e-5, atol=1e-6)


def test_esm2ce_matches_reference(ref_checkpoint, parity_data, tmp_path):
    """--model-type esm2ce: the reference's ESM2CE (its --model-type esm2ce) on the same checkpoint and cells."""
    ref = reference.run_reference(ref_checkpoint, parity_data["path"], output_keys=["embeddings"],
                                  model_type="esm2ce", workdir=tmp_path / "ref")
    out = tmp_path / "esm2ce.h5ad"
    assert main(["infer", "--checkpoint", str(ref_checkpoint), "--data", str(parity_data["path"]),
                 "--output", str(out), "--model-type", "esm2ce", "--device", "cpu"]) == 0
    ours = anndata.read_h5ad(out).obsm["embeddings"]
    assert ours.shape == ref.obsm["embeddings"].shape == (58, 24)  # 48 + 10 crafted cells, the protein width
    assert max_rel_error(ours, ref.obsm["embeddings"]) <= TOL


def test_embedding_layer_index_matches_reference_truncated(ref_checkpoint, parity_data, tmp_path):
    """--embedding-layer-index 0 of a 2-layer checkpoint equals the reference's own inference on the
    same checkpoint cut to its first layer (config num_layers 1, the later layers' weights dropped)."""
    cut = tmp_path / "cut"
    shutil.copytree(ref_checkpoint, cut)
    config = json.loads((cut / "config.json").read_text())
    assert config["model"]["model_config"]["num_layers"] == 2
    config["model"]["model_config"]["num_layers"] = 1
    (cut / "config.json").write_text(json.dumps(config))
    weights = torch.load(cut / "model_weights.pt", weights_only=True)
    torch.save({k: v for k, v in weights.items() if ".encoder_layers.1." not in k}, cut / "model_weights.pt")
    ref = reference.run_reference(cut, parity_data["path"], output_keys=["embeddings"], workdir=tmp_path / "ref")
    for index in ("0", "-2"):
        out = tmp_path / f"layer{index}.h5ad"
        assert main(["infer", "--checkpoint", str(ref_checkpoint), "--data", str(parity_data["path"]),
                     "--output", str(out), "--embedding-layer-index", index, "--device", "cpu"]) == 0
        assert max_rel_error(anndata.read_h5ad(out).obsm["embeddings"], ref.obsm["embeddings"]) <= TOL
