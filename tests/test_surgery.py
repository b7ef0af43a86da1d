"""Serving other species: --species-embedding (the reference's embedding surgery) and add-species."""

from __future__ import annotations

import anndata
import numpy as np
import pytest

import reference
from parity import max_rel_error
from tfx.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tfx.checkpoint.surgery import add_aux_values, add_species
from tfx.cli import main
from tfx.vocab import write_gene_embeddings

TOL = 1e-5


@pytest.fixture(scope="module")
def surgery_setup(parity_data, tmp_path_factory):
    """A checkpoint of another species (more genes than the new one, as the reference needs) and
    a gene file for the data's species."""
    tmp = tmp_path_factory.mktemp("surgery")
    old_genes = [f"ENSOLD{i:011d}" for i in range(1300)]
    # The reference's surgery rebuilds special tokens in its own fixed order and keeps the old
    # [PAD]/[START] ids, so it is self-consistent only for checkpoints in that order.
    ckpt = reference.build_reference_checkpoint(tmp / "ckpt", {"other_species": old_genes}, seq_len=31,
                                                special_tokens=reference.SURGERY_SPECIAL_TOKENS, seed=5)
    rng = np.random.default_rng(11)
    new_genes = parity_data["vocab_genes"]
    new_file = tmp / "mus_musculus_gene.h5"
    write_gene_embeddings(new_file, new_genes, rng.normal(size=(len(new_genes), 24)).astype(np.float32))
    return ckpt, new_file


def _infer(args, out):
    assert main(["infer", *args, "--output", str(out), "--device", "cpu"]) == 0
    return anndata.read_h5ad(out)


def test_species_embedding_matches_reference_surgery(surgery_setup, parity_data, tmp_path):
    ckpt, new_file = surgery_setup
    ref = reference.run_reference(ckpt, parity_data["path"], pretrained_embedding=[new_file], workdir=tmp_path / "r")
    ours = _infer(["--checkpoint", str(ckpt), "--data", str(parity_data["path"]),
                   "--species-embedding", str(new_file)], tmp_path / "o.h5ad")
    assert max_rel_error(ours.obsm["embeddings"], ref.obsm["embeddings"]) <= TOL


def test_add_species_checkpoint_equals_species_embedding(surgery_setup, parity_data, tmp_path):
    ckpt, new_file = surgery_setup
    old = load_checkpoint(ckpt)
    grown = save_checkpoint(add_species(old, [new_file]), tmp_path / "grown")
    again = load_checkpoint(grown)
    assert again.vocab.tokens[: len(old.vocab)] == old.vocab.tokens  # existing ids unchanged
    assert [f for f, _ in again.vocab.files] == ["other_species_gene.h5", "mus_musculus_gene.h5"]
    n_old = len(old.vocab)
    np.testing.assert_array_equal(again.model.gene_embeddings.embedding.weight[:n_old].numpy(),
                                  old.model.gene_embeddings.embedding.weight.numpy())
    a = _infer(["--checkpoint", str(grown), "--data", str(parity_data["path"])], tmp_path / "a.h5ad")
    b = _infer(["--checkpoint", str(ckpt), "--data", str(parity_data["path"]), "--species-embedding",
                str(new_file)], tmp_path / "b.h5ad")
    assert max_rel_error(a.obsm["embeddings"], b.obsm["embeddings"]) <= TOL


def test_add_species_refuses_conflicts(surgery_setup, tmp_path):
    ckpt, new_file = surgery_setup
    old = load_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="already has vocabs/other_species_gene.h5"):
        add_species(old, [ckpt / "vocabs" / "other_species_gene.h5"])
    clash = tmp_path / "clash_gene.h5"
    write_gene_embeddings(clash, ["ENSOLD00000000003"], np.zeros((1, 24), np.float32))
    with pytest.raises(CheckpointError, match="already in the vocabulary"):
        add_species(old, [clash])
    wide = tmp_path / "wide_gene.h5"
    write_gene_embeddings(wide, ["ENSNEW1"], np.zeros((1, 8), np.float32))
    with pytest.raises(CheckpointError, match="embedding dimension"):
        add_species(old, [wide])


def test_add_assays_to_a_checkpoint_without_an_assay_vocabulary_is_one_line(tmp_path):
    ckpt = load_checkpoint(reference.build_reference_checkpoint(tmp_path / "ckpt", {"other": ["ENSA1", "ENSA2"]},
                                                                seq_len=7, aux=False))
    with pytest.raises(CheckpointError, match=r"has no 'assay' vocabulary \(aux columns: none\); drop vocab.add_assays"
                       ) as err:
        add_aux_values(ckpt, "assay", ["MERFISH"])
    assert "\n" not in str(err.value)
