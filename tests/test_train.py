"""Training for real: Hydra recipes, Lightning, DeepSpeed ZeRO in several processes, resume,
continuation with a new species, fine-tuning; every run exported and served by `tfx infer`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import anndata
import numpy as np
import pytest
import torch

from conftest import TYPES, train_metrics as _metrics, train_overrides as _overrides
from tfx.checkpoint import load_checkpoint
from tfx.cli import main
from tfx.errors import RecipeError
from tfx.recipe import compose
from tfx.train.run import train

def test_tiny_pretraining_lowers_both_losses(pretrained):
    m = _metrics(pretrained)
    gene, count = m["train/gene_id"].dropna().to_numpy(), m["train/count"].dropna().to_numpy()
    assert gene[-5:].mean() < 0.9 * gene[:5].mean()
    assert count[-5:].mean() < count[:5].mean()
    for column in ("train/lr", "train/grad_norm", "train/device/items_per_sec", "train/device/samples_per_sec",
                   "train/device/flops_per_sec", "val/loss"):
        assert m[column].notna().any(), column
    assert (pretrained / "export" / "model_weights.pt").exists()


def test_exported_checkpoint_serves_and_reexports(pretrained, atlas, tmp_path):
    _, _, val = atlas["alpha"]
    assert main(["infer", "--checkpoint", str(pretrained / "export"), "--data", str(val), "--output",
                 str(tmp_path / "emb.h5ad"), "--outputs", "embeddings,llh"]) == 0
    out = anndata.read_h5ad(tmp_path / "emb.h5ad")
    assert np.isfinite(out.obsm["embeddings"]).all() and np.isfinite(out.obs["llh"]).all()
    assert main(["export", str(pretrained), "--output", str(tmp_path / "again")]) == 0
    a = torch.load(pretrained / "export" / "model_weights.pt", weights_only=True)
    b = torch.load(tmp_path / "again" / "model_weights.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_equals_uninterrupted(atlas, tmp_path):
    common = ["optim.total_steps=12", "trainer.checkpoint_every_n_steps=6", "data.val_files=[]"]
    train(compose("pretrain/tiny", _overrides(atlas, tmp_path / "full", 12, *common)))
    train(compose("pretrain/tiny", _overrides(atlas, tmp_path / "split", 6, *common)))
    train(compose("pretrain/tiny", _overrides(atlas, tmp_path / "split", 12, *common)))  # resume=auto
    full = torch.load(tmp_path / "full" / "export" / "model_weights.pt", weights_only=True)
    split = torch.load(tmp_path / "split" / "export" / "model_weights.pt", weights_only=True)
    for k in full:
        torch.testing.assert_close(split[k], full[k], rtol=1e-4, atol=1e-5)
    steps = _metrics(tmp_path / "split")["step"].dropna()
    assert steps.min() == 0 and steps.max() >= 11  # both halves' metrics are kept


def _infer_ok(ckpt_dir, data, out):
    assert main(["infer", "--checkpoint", str(ckpt_dir), "--data", str(data), "--output", str(out)]) == 0
    assert np.isfinite(anndata.read_h5ad(out).obsm["embeddings"]).all()


def _tfx(args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "tfx.cli", *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_deepspeed_zero2_two_processes(atlas, tmp_path):
    out, extensions = tmp_path / "zero2", tmp_path / "torch_extensions"
    proc = _tfx(["train", "pretrain/tiny", *_overrides(atlas, out, 6, "trainer.devices=2",
                                                        "strategy=deepspeed_zero2", "data.val_files=[]")],
                env={"TORCH_EXTENSIONS_DIR": str(extensions)})
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-3000:]
    assert not extensions.exists() or not any(extensions.iterdir())  # on CPU, no C++ op is compiled
    assert (out / "checkpoints" / "final.ckpt" / "checkpoint").is_dir()  # sharded ZeRO checkpoint
    shards = list((out / "checkpoints" / "final.ckpt" / "checkpoint").glob("*optim_states.pt"))
    assert len(shards) == 2  # one optimizer partition per rank
    _infer_ok(out / "export", atlas["alpha"][2], tmp_path / "emb.h5ad")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_node_torchrun_launch(atlas, tmp_path):
    out, port = tmp_path / "nodes", _free_port()
    args = ["train", "pretrain/tiny", *_overrides(atlas, out, 4, "trainer.num_nodes=2", "trainer.devices=1",
                                                   "strategy=deepspeed_zero2", "data.val_files=[]")]
    nodes = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                          "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                          "-m", "tfx.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)
    ]
    logs = [n.communicate(timeout=600)[0] for n in nodes]
    assert all(n.returncode == 0 for n in nodes), logs[0][-3000:] + logs[1][-3000:]
    assert "MEMBER: 2/2" in "".join(logs)  # one world across the two launchers
    _infer_ok(out / "export", atlas["alpha"][2], tmp_path / "emb.h5ad")


def test_continuation_adds_species_and_learns_it(pretrained, atlas, tmp_path):
    emb_b, cells_b, val_b = atlas["beta"]
    _, cells_a, val_a = atlas["alpha"]
    out = tmp_path / "cont"
    train(compose("continue/add_species", [
        f"init={pretrained / 'export'}", f"vocab.add=[{emb_b}]", "data=h5ad", f"data.files=[{cells_a},{cells_b}]",
        f"data.val_files=[{val_a},{val_b}]", f"output_dir={out}", "trainer.max_steps=40", "data.token_budget=2048"]))
    grown = load_checkpoint(out / "export")
    assert "ENSBETA00000000000" in grown.vocab.index and len(grown.vocab.files) == 2
    report = json.loads((out / "continuation_report.json").read_text())
    assert report["beta_val"]["after"]["gene_id"] < report["beta_val"]["before"]["gene_id"]
    assert set(report) == {"alpha_val", "beta_val"}
    _infer_ok(out / "export", val_b, tmp_path / "emb.h5ad")


def test_finetuning_classifies_cell_types(pretrained, atlas, tmp_path):
    _, cells, val = atlas["alpha"]
    out = tmp_path / "ft"
    train(compose("finetune/tiny", [f"init={pretrained / 'export'}", f"data.files=[{cells}]",
                                    f"data.val_files=[{val}]", f"output_dir={out}", "trainer.max_steps=60",
                                    "trainer.val_check_interval=30", "finetune.backbone=full", "data.token_budget=2048"]))
    acc = _metrics(out)["val/accuracy"].dropna().to_numpy()
    assert acc[-1] > 0.9
    assert json.loads((out / "export" / "task.json").read_text())["classes"] == sorted(TYPES)
    assert (out / "export" / "task_head.pt").exists()


def test_finetuning_without_files_names_data_files(pretrained, tmp_path):
    with pytest.raises(RecipeError, match=r"data.files lists no h5ad file; set data.files=\[cells.h5ad\]"):
        train(compose("finetune/tiny", [f"init={pretrained / 'export'}", "data.files=[]",
                                        f"output_dir={tmp_path / 'ft'}"]))
    assert not (tmp_path / "ft").exists()


@pytest.mark.parametrize("override, message", [
    ("model.likelihood=zinb", "unknown likelihood 'zinb'"),
    ("model.embed_dim=30", "not divisible by num_heads"),
    ("strategy=deepspeed_zero9", "Could not find 'strategy/deepspeed_zero9'"),
    ("output_dir=", "output_dir is empty; name the run's directory"),
])
def test_recipe_errors_before_compute(atlas, tmp_path, override, message):
    with pytest.raises(RecipeError, match=message):
        train(compose("pretrain/tiny", _overrides(atlas, tmp_path / "bad", 5, override)))
    assert not (tmp_path / "bad").exists()


def test_a_run_directory_of_another_objective_is_refused(pretrained, atlas):
    """The objective compared is the one the build holds; the run directory is left as it was."""
    _, cells, _ = atlas["alpha"]
    before = sorted(p.relative_to(pretrained) for p in pretrained.rglob("*"))
    with pytest.raises(RecipeError, match=r"holds a run of another model or objective \(objective 'pretrain' -> "
                                          r"'continue'\)"):
        train(compose("continue/tiny", [f"init={pretrained / 'export'}", "data=h5ad", f"data.files=[{cells}]",
                                        f"output_dir={pretrained}", "trainer.max_steps=1"]))
    assert sorted(p.relative_to(pretrained) for p in pretrained.rglob("*")) == before
