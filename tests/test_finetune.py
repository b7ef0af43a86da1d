"""Fine-tuning that ends in something served: LoRA through peft, merged or kept as adapters beside a
verified base, new assay tokens, and `tfx infer --outputs predictions` equal to what the training
module predicts. Real Lightning runs of the tiny recipe on CPU."""

from __future__ import annotations

import json
import shutil

import anndata
import numpy as np
import pytest
import torch
import yaml

import reference
from conftest import TYPES, built_once, file_tokens, train_metrics as _metrics
from tfx.checkpoint import CheckpointError, load_checkpoint
from tfx.cli import main
from tfx.errors import InputError, RecipeError
from tfx.model import ModelConfig, SpecialIds, TranscriptFormer
from tfx.model.lora import LORA_TARGETS, add_lora, is_adapter
from tfx.recipe import build, compose
from tfx.recipe.compose import conf_dir
from tfx.tokenize.batches import BatchPlanner, BatchSpec
from tfx.train.export import export_run
from tfx.train.run import train

LORA = ["finetune.adapter=lora", "finetune.lora.rank=4", "finetune.lora.alpha=8"]


def _finetune(pretrained, atlas, out, steps, *extra):
    _, cells, val = atlas["alpha"]
    return [f"init={pretrained / 'export'}", f"data.files=[{cells}]", f"data.val_files=[{val}]",
            f"output_dir={out}", f"trainer.max_steps={steps}", "trainer.val_check_interval=20",
            "data.token_budget=2048", "optim.lr=5e-3", "optim.warmup_steps=2", *extra]


def _served(ckpt_dir, data, out, outputs="predictions"):
    assert main(["infer", "--checkpoint", str(ckpt_dir), "--data", str(data), "--output", str(out),
                 "--outputs", outputs]) == 0
    return anndata.read_h5ad(out)


def _module_outputs(overrides, data) -> np.ndarray:
    """What the training module itself predicts (rebuilt from the recipe, final.ckpt loaded) for
    every cell of ``data`` in one batch, in file order: class probabilities, or values."""
    run = build(compose("finetune/tiny", overrides))
    module = run.objective.module(run.checkpoint.model)
    state = torch.load(run.output_dir / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    module.eval()
    cells, aux = file_tokens(run.checkpoint, data)
    planner = BatchPlanner(run.checkpoint.model_cfg.seq_len, aux.shape[1], BatchSpec(10**9, len(cells)))
    (plan,) = planner.plan([len(ids) for ids, _ in cells])
    batch, idx = planner.emit(plan, cells.__getitem__, aux, run.checkpoint.vocab.pad)
    with torch.no_grad():
        pred = module(batch)
    pred = pred.softmax(-1) if module.task.categorical else pred
    out = np.zeros(tuple(pred.shape), dtype=np.float32)
    out[idx] = pred.numpy()
    return out


@pytest.fixture(scope="module")
def lora_run(pretrained, atlas, tmp_path_factory):
    def overrides(out):
        return _finetune(pretrained, atlas, out, 40, *LORA)

    def build(root):
        train(compose("finetune/tiny", overrides(root / "run")))

    out = built_once(tmp_path_factory, "lora", build) / "run"
    return out, overrides(out)


def test_lora_trains_only_adapters_and_head(lora_run, pretrained):
    out, _ = lora_run
    base = torch.load(pretrained / "export" / "model_weights.pt", weights_only=True)
    trained = torch.load(out / "checkpoints" / "final.ckpt", weights_only=True)["state_dict"]
    backbone = {k.removeprefix("model.").replace(".base_layer.", "."): v for k, v in trained.items()
                if k.startswith("model.") and not is_adapter(k)}
    assert backbone.keys() == base.keys()
    assert all(torch.equal(backbone[k], base[k]) for k in base)  # bit-identical after training
    adapters = {k: v for k, v in trained.items() if is_adapter(k)}
    n_layers = load_checkpoint(pretrained / "export").model_cfg.num_layers
    assert len(adapters) == 2 * 6 * n_layers  # A and B of q, k, v, out, linear1, linear2 in every layer
    assert any(v.abs().sum() > 0 for k, v in adapters.items() if "lora_B" in k)  # B starts at zero: it trained
    accuracy = _metrics(out)["val/accuracy"].dropna().to_numpy()
    assert accuracy[-1] > 1 / len(TYPES) + 0.2


def test_lora_merged_and_adapter_exports_serve_the_module_predictions(lora_run, atlas, tmp_path):
    out, overrides = lora_run
    _, _, val = atlas["alpha"]
    expected = _module_outputs(overrides, val)  # the adapter-applied model, unmerged
    merged = out / "export"
    assert not (merged / "adapter.json").exists()
    assert not any(is_adapter(k) for k in torch.load(merged / "model_weights.pt", weights_only=True))
    kept = export_run(out, tmp_path / "adapter_export", lora_form="adapter")
    assert not (kept / "model_weights.pt").exists()
    assert (kept / "adapter_weights.pt").stat().st_size < (merged / "model_weights.pt").stat().st_size / 4
    for ckpt in (merged, kept):
        served = _served(ckpt, val, tmp_path / f"{ckpt.name}.h5ad")
        np.testing.assert_allclose(served.obsm["cell_type_proba"], expected, atol=1e-5)
        assert list(served.obs["cell_type_pred"]) == list(np.array(sorted(TYPES))[expected.argmax(1)])
        np.testing.assert_allclose(served.obs["cell_type_prob"], expected.max(1), atol=1e-5)


def test_reference_loads_the_merged_export(lora_run, atlas, tmp_path):
    out, _ = lora_run
    _, _, val = atlas["alpha"]
    few = tmp_path / "few.h5ad"
    anndata.read_h5ad(val)[:6].copy().write_h5ad(few)
    ref = reference.run_reference(out / "export", few, output_keys=["embeddings"], workdir=tmp_path / "ref")
    ours = _served(out / "export", few, tmp_path / "ours.h5ad", "embeddings").obsm["embeddings"]
    np.testing.assert_allclose(ours, ref.obsm["embeddings"], rtol=1e-4, atol=1e-5)


def test_adapter_export_verifies_its_base(lora_run, pretrained, tmp_path):
    out, _ = lora_run
    base = tmp_path / "base"
    shutil.copytree(pretrained / "export", base)
    kept = export_run(out, tmp_path / "kept", lora_form="adapter")
    record = json.loads((kept / "adapter.json").read_text())
    record["base"]["path"] = str(base)
    (kept / "adapter.json").write_text(json.dumps(record))
    load_checkpoint(kept)  # an identical copy of the base is accepted
    weights = torch.load(base / "model_weights.pt", weights_only=True)
    weights["transformer_encoder.encoder_layers.0.linear1.weight"] += 1e-3
    torch.save(weights, base / "model_weights.pt")
    with pytest.raises(CheckpointError, match=r"is not the base these adapters were trained on"):
        load_checkpoint(kept)
    shutil.rmtree(base)
    with pytest.raises(CheckpointError, match=r"its base checkpoint .* is missing"):
        load_checkpoint(kept)


def test_trainable_share_of_lora_on_the_sapiens_shape():
    """TF-Sapiens' shape (a human vocabulary, ESM-2 15B's 5120-wide table) on the meta device, so
    nothing is allocated: rank-8 LoRA trains well under 1% of the backbone (the frozen table aside)."""
    sapiens = yaml.safe_load((conf_dir() / "model" / "sapiens.yaml").read_text())
    table = torch.zeros(1, 5120).expand(25_000, 5120)  # one row in memory
    with torch.device("meta"):
        model = TranscriptFormer(ModelConfig(**sapiens), table, SpecialIds(1, 2, 3),
                                 {"assay": {"unknown": 0}}, max_counts=30)
    backbone = sum(p.numel() for p in model.parameters()) - model.gene_embeddings.embedding.weight.numel()
    add_lora(model, {"rank": 8, "alpha": 16, "dropout": 0.0, "target_modules": list(LORA_TARGETS)})
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 0 < trainable < 0.01 * backbone


def test_added_assay_reaches_the_output_and_resume_continues(pretrained, atlas, tmp_path):
    _, cells, val = atlas["alpha"]
    new_assay = "Slide-seqV2 (new)"
    for path in (cells, val):
        adata = anndata.read_h5ad(path)
        adata.obs["assay"] = new_assay
        adata.write_h5ad(tmp_path / path.name)
    cells, val = tmp_path / cells.name, tmp_path / val.name
    common = ["data.files=[%s]" % cells, "data.val_files=[]", f"vocab.add_assays=['{new_assay}']",
              "optim.total_steps=12", "trainer.checkpoint_every_n_steps=6", "finetune.backbone=full"]
    full = _finetune(pretrained, atlas, tmp_path / "full", 12, *common)
    train(compose("finetune/tiny", full))
    split = _finetune(pretrained, atlas, tmp_path / "split", 6, *common)
    train(compose("finetune/tiny", split))
    train(compose("finetune/tiny", [o.replace("trainer.max_steps=6", "trainer.max_steps=12") for o in split]))
    for name in ("model_weights.pt", "task_head.pt"):
        a = torch.load(tmp_path / "full" / "export" / name, weights_only=True)
        b = torch.load(tmp_path / "split" / "export" / name, weights_only=True)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5)
    export = tmp_path / "full" / "export"
    vocab = json.loads((export / "vocabs" / "assay_vocab.json").read_text())
    assert vocab[new_assay] == len(vocab) - 1
    with_new = _served(export, val, tmp_path / "new.h5ad", "embeddings").obsm["embeddings"]
    as_unknown = anndata.read_h5ad(val)
    as_unknown.obs["assay"] = "an assay nobody has"
    as_unknown.write_h5ad(tmp_path / "unknown_assay.h5ad")
    unknown = _served(export, tmp_path / "unknown_assay.h5ad", tmp_path / "u.h5ad", "embeddings").obsm["embeddings"]
    assert np.abs(with_new - unknown).max() > 1e-3


def test_regression_is_served(pretrained, atlas, tmp_path):
    _, cells, val = atlas["alpha"]
    for path in (cells, val):  # a numeric column: the share of genes detected
        adata = anndata.read_h5ad(path)
        adata.obs["detected"] = (np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X) > 0).mean(1)
        adata.write_h5ad(tmp_path / path.name)
    overrides = _finetune(pretrained, atlas, tmp_path / "reg", 10, f"data.files=[{tmp_path / cells.name}]",
                          f"data.val_files=[{tmp_path / val.name}]", "task=regression", "task.label_key=detected",
                          "finetune.backbone=frozen")
    train(compose("finetune/tiny", overrides))
    served = _served(tmp_path / "reg" / "export", tmp_path / val.name, tmp_path / "pred.h5ad")
    assert json.loads((tmp_path / "reg" / "export" / "task.json").read_text())["type"] == "regression"
    np.testing.assert_allclose(served.obs["detected_pred"], _module_outputs(overrides, tmp_path / val.name)[:, 0],
                               atol=1e-5)
    assert "detected_proba" not in served.obsm


def test_predictions_need_a_task_head(pretrained, atlas, tmp_path, capsys):
    _, _, val = atlas["alpha"]
    code = main(["infer", "--checkpoint", str(pretrained / "export"), "--data", str(val),
                 "--output", str(tmp_path / "p.h5ad"), "--outputs", "predictions"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "has no task head (task.json)" in err[0]
    assert not (tmp_path / "p.h5ad").exists()


def test_finetuning_on_a_missing_label_column_is_one_line(pretrained, atlas, tmp_path):
    _, cells, _ = atlas["alpha"]
    with pytest.raises(InputError, match=rf"{cells}: obs has no column 'tissue'"):
        build(compose("finetune/tiny", _finetune(pretrained, atlas, tmp_path / "x", 2, "task.label_key=tissue")))


@pytest.mark.parametrize("override, message", [
    ("finetune.backbone=half", r"finetune\.backbone: Invalid value 'half', expected one of \[frozen, partial, full\]"),
    ("finetune.adapter=qlora", r"finetune\.adapter: Invalid value 'qlora', expected one of \[none, lora\]"),
    ("finetune.export=adapter", "finetune.export=adapter keeps LoRA adapters; set finetune.adapter=lora"),
    ("finetune.lora.rank=0", r"finetune\.lora\.rank=0 must be >= 1"),
    ("finetune.lora.alpha=0", r"finetune\.lora\.alpha=0\.0 must be > 0"),
    ("finetune.trainable_layers=0", r"finetune\.trainable_layers=0 must be >= 1"),
])
def test_bad_finetune_settings_are_one_line_before_compute(pretrained, atlas, tmp_path, override, message):
    with pytest.raises(RecipeError, match=message) as err:
        build(compose("finetune/tiny", _finetune(pretrained, atlas, tmp_path / "x", 2, override)))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "x").exists()


def test_lora_form_of_a_run_without_adapters_is_one_line(pretrained, tmp_path, capsys):
    code = main(["export", str(pretrained), "--output", str(tmp_path / "e"), "--lora-form", "adapter"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not a LoRA fine-tuning run; drop --lora-form" in err[0]
    assert not (tmp_path / "e").exists()
