"""The official checkpoint layout: loading, saving (readable by the reference), and refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import reference
from parity import max_rel_error
from tfx.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tfx.model.config import parse_config

# The published tf_sapiens config.json, key for key (sizes of the real model).
TF_SAPIENS_CONFIG = {"model": {
    "_target_": "transcriptformer.model.model.Transcriptformer",
    "data_config": {
        "_target_": "transcriptformer.data.dataclasses.DataConfig", "aux_vocab_path": None, "pin_memory": True,
        "aux_cols": "assay", "gene_col_name": "ensembl_id", "clip_counts": None, "filter_to_vocabs": None,
        "filter_outliers": None, "pad_zeros": True, "normalize_to_scale": 0, "n_data_workers": 1,
        "sort_genes": None, "randomize_genes": None, "min_expressed_genes": None, "gene_pad_token": "[PAD]",
        "aux_pad_token": "unknown", "esm2_mappings_path": None, "esm2_mappings": ["homo_sapiens_gene.h5"],
        "special_tokens": ["unknown", "[PAD]", "[START]", "[END]", "[RD]", "[CELL]", "[MASK]"]},
    "model_config": {
        "_target_": "transcriptformer.data.dataclasses.ModelConfig", "log_counts_eps": 1e-06, "num_heads": 16,
        "num_layers": 12, "model_dim": 2048, "embed_dim": 2048, "dropout": 0.1, "seq_len": 2047, "aux_len": 1,
        "block_len": 128, "activation": "gelu", "fw_bias": False, "softcap": 10, "attn_bias": False,
        "mu_link_fn": "softmax", "gene_head_hidden_dim": 2048},
    "loss_config": {"_target_": "transcriptformer.data.dataclasses.LossConfig", "gene_id_loss_weight": 1.0,
                    "softplus_approx": True}}}


def test_official_config_parses_unchanged():
    model_cfg, data_cfg = parse_config(TF_SAPIENS_CONFIG)
    assert (model_cfg.num_layers, model_cfg.num_heads, model_cfg.embed_dim, model_cfg.seq_len) == (12, 16, 2048, 2047)
    assert model_cfg.softcap == 10 and model_cfg.likelihood == "ztp"
    assert data_cfg.aux_cols == ["assay"] and data_cfg.esm2_mappings == ["homo_sapiens_gene.h5"]
    assert data_cfg.clip_counts == 30  # null in the release: the reference's CLI default applies
    assert data_cfg.special_tokens[1] == "[PAD]"


def test_saved_checkpoint_loads_in_reference_with_identical_outputs(ref_checkpoint, parity_data, tmp_path):
    ckpt = load_checkpoint(ref_checkpoint)
    saved = save_checkpoint(ckpt, tmp_path / "export")
    assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model_weights.pt", "vocabs"]
    reloaded = load_checkpoint(saved)
    for (k, a), (k2, b) in zip(ckpt.model.state_dict().items(), reloaded.model.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert reloaded.vocab.tokens == ckpt.vocab.tokens
    original = reference.run_reference(ref_checkpoint, parity_data["path"], workdir=tmp_path / "r1")
    exported = reference.run_reference(saved, parity_data["path"], workdir=tmp_path / "r2")
    assert max_rel_error(exported.obsm["embeddings"], original.obsm["embeddings"]) == 0.0
    assert max_rel_error(exported.uns["llh"]["llh"], original.uns["llh"]["llh"]) == 0.0


@pytest.fixture()
def ckpt_copy(ref_checkpoint, tmp_path):
    return shutil.copytree(ref_checkpoint, tmp_path / "ckpt")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_weights_are_refused(ckpt_copy, capsys):
    state = torch.load(ckpt_copy / "model_weights.pt", weights_only=True)
    torch.save({**state, "extra": Payload()}, ckpt_copy / "model_weights.pt")
    with pytest.raises(CheckpointError, match="pickled objects"):
        load_checkpoint(ckpt_copy)
    assert "must never run" not in capsys.readouterr().out


def test_training_checkpoint_points_to_export(ckpt_copy):
    state = torch.load(ckpt_copy / "model_weights.pt", weights_only=True)
    torch.save({"state_dict": state, "global_step": 3}, ckpt_copy / "model_weights.pt")
    with pytest.raises(CheckpointError, match="tfx export"):
        load_checkpoint(ckpt_copy)


def _edit_config(ckpt_dir, edit):
    cfg = json.loads((ckpt_dir / "config.json").read_text())
    edit(cfg["model"])
    (ckpt_dir / "config.json").write_text(json.dumps(cfg))


def test_unknown_target_is_refused_not_imported(ckpt_copy):
    _edit_config(ckpt_copy, lambda m: m["model_config"].update({"_target_": "os.system"}))
    with pytest.raises(CheckpointError, match="never imports"):
        load_checkpoint(ckpt_copy)


def test_pickle_embedding_file_is_refused(ckpt_copy):
    _edit_config(ckpt_copy, lambda m: m["data_config"].update({"esm2_mappings": ["mus_musculus_gene.pkl"]}))
    (ckpt_copy / "vocabs" / "mus_musculus_gene.pkl").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="pickle embedding files are refused"):
        load_checkpoint(ckpt_copy)


def test_weights_of_another_model_are_refused(ckpt_copy):
    _edit_config(ckpt_copy, lambda m: m["model_config"].update({"embed_dim": 64}))
    with pytest.raises(CheckpointError, match="do not fit config.json"):
        load_checkpoint(ckpt_copy)


def test_vocabulary_of_another_model_is_refused(ckpt_copy):
    from tfx.vocab import read_gene_embeddings, write_gene_embeddings

    path = ckpt_copy / "vocabs" / "mus_musculus_gene.h5"
    genes, table = read_gene_embeddings(path)
    write_gene_embeddings(path, genes[:-5], table[:-5])
    with pytest.raises(CheckpointError, match="do not belong to these weights"):
        load_checkpoint(ckpt_copy)


def test_an_unreadable_gene_file_is_one_line(tmp_path):
    from tfx.errors import VocabError
    from tfx.vocab import read_gene_embeddings

    (tmp_path / "text.h5").write_text("not HDF5")
    for path, reason in [(tmp_path, "it is a directory"), (tmp_path / "text.h5", "file signature not found"),
                         (tmp_path / "missing.h5", "No such file or directory")]:
        with pytest.raises(VocabError, match=reason) as err:
            read_gene_embeddings(path)
        assert "\n" not in str(err.value)


def test_special_token_rows_follow_the_reference(ckpt_copy):
    """Rebuilding the frozen table from the h5 files gives the reference's table, special rows included."""
    from tfx.vocab import GeneVocab

    ckpt = load_checkpoint(ckpt_copy)
    files = [ckpt_copy / "vocabs" / f for f in ckpt.data_cfg.esm2_mappings]
    _, table = GeneVocab.from_files(ckpt.data_cfg.special_tokens, files)
    np.testing.assert_array_equal(table, ckpt.model.gene_embeddings.embedding.weight.numpy())
