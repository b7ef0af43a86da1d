"""Every packaged recipe composes, builds and trains: real Hydra composition against the typed
schema, two optimizer steps from real shards with the model shrunk by overrides, the export served
by `tfx infer`. Also: the schema's one-line errors, species presets, the checkpoint owning
preprocessing, and recipes shipped in a non-editable install."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, file_tokens, write_h5ad
from tfx.checkpoint import load_checkpoint
from tfx.cli import main
from tfx.data.shards import write_shards
from tfx.errors import RecipeError, TfxError
from tfx.recipe import available, build, compose
from tfx.train.run import check, train
from tfx.vocab import write_gene_embeddings

METAZOA = ["drosophila_melanogaster", "lytechinus_variegatus", "plasmodium_falciparum", "xenopus_laevis",
           "caenorhabditis_elegans", "gallus_gallus", "mus_musculus", "saccharomyces_cerevisiae", "danio_rerio",
           "oryctolagus_cuniculus", "spongilla_lacustris", "homo_sapiens"]
EXEMPLAR = ["danio_rerio", "drosophila_melanogaster", "homo_sapiens", "mus_musculus", "caenorhabditis_elegans"]
SHRINK = ["model.embed_dim=16", "model.num_heads=2", "model.num_layers=1", "model.model_dim=32", "model.seq_len=31",
          "model.gene_head_hidden_dim=32", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.num_nodes=1",
          "trainer.precision=32", "trainer.max_steps=2", "trainer.log_every_n_steps=1",
          "trainer.activation_checkpointing=false", "strategy=auto", "logger=csv", "data.num_workers=0",
          "data.token_budget=512", "data.max_cells=16", "data.shuffle_buffer=50"]


def _cells(path: Path, genes: list[str], n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    types = rng.choice(["t_cell", "b_cell", "neuron"], n)
    x = (rng.random((n, len(genes))) < 0.3) * rng.integers(1, 50, (n, len(genes)))
    for c, t in enumerate(types):  # each type expresses its own genes more
        x[c, {"t_cell": 0, "b_cell": 1, "neuron": 2}[t] :: 3] += 5
    obs = pd.DataFrame({"assay": "10x 3' v3", "cell_type": types}, index=[f"{path.stem}{i}" for i in range(n)])
    return write_h5ad(path, genes, x, obs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Gene files of the 12 TF-Metazoa species; human and mouse cells as training and held-out shards."""
    tmp = tmp_path_factory.mktemp("recipes")
    rng = np.random.default_rng(0)
    genes, files = {}, {}
    for i, species in enumerate(METAZOA):
        genes[species] = [f"ENS{i:02d}G{g:08d}" for g in range(60 if species in ("homo_sapiens", "mus_musculus") else 8)]
        files[species] = tmp / f"{species}_gene.h5"
        write_gene_embeddings(files[species], genes[species],
                                               rng.normal(size=(len(genes[species]), 8)).astype(np.float32))
    shards = {}
    for species, seed in (("homo_sapiens", 1), ("mus_musculus", 2)):
        for split, n in (("train", 96), ("val", 32)):
            h5ad = _cells(tmp / f"{species}_{split}.h5ad", genes[species], n, seed + (split == "val"))
            write_shards([h5ad], species, tmp / species / split, cells_per_shard=24, processes=1)
            shards[species, split] = tmp / species / split
    return {"tmp": tmp, "files": files, "shards": shards, "human_h5ad": tmp / "homo_sapiens_val.h5ad"}


def _embeddings(data, species):
    return "vocab.embeddings=[" + ",".join(str(data["files"][s]) for s in species) + "]"


@pytest.fixture(scope="module")
def base(data):
    """A tiny pretrained export: the checkpoint continuation and fine-tuning recipes start from."""
    out = data["tmp"] / "base"
    train(compose("pretrain/tiny", [*SHRINK, f"data.shards={data['shards']['homo_sapiens', 'train']}",
                                    _embeddings(data, ["homo_sapiens"]), f"output_dir={out}"]))
    return out / "export"


def _recipe_overrides(name: str, data, base, out) -> list[str]:
    human, mouse = data["shards"]["homo_sapiens", "train"], data["shards"]["mus_musculus", "train"]
    human_val = data["shards"]["homo_sapiens", "val"]
    common = [*SHRINK, f"output_dir={out}", f"data.val_shards={human_val}", "trainer.val_check_interval=1",
              "trainer.limit_val_batches=1"]
    per_recipe = {
        "pretrain/tiny": [f"data.shards={human}", _embeddings(data, ["homo_sapiens"])],
        "pretrain/sapiens": [f"data.shards={human}", _embeddings(data, ["homo_sapiens"])],
        "pretrain/exemplar": [f"data.shards={human}", _embeddings(data, EXEMPLAR[::-1])],  # any order given
        "pretrain/metazoa": [f"data.shards={human}", _embeddings(data, METAZOA)],
        "continue/tiny": [f"init={base}", f"data.shards={human}"],
        "continue/add_species": [f"init={base}", f"vocab.add=[{data['files']['mus_musculus']}]",
                                 f"data.shards=[{human},{mouse}]", "data.weights=[0.5,0.5]"],
        "finetune/tiny": [f"init={base}", "data=shards", f"data.shards={human}", f"data.val_shards={human_val}"],
        "finetune/celltype": [f"init={base}", f"data.shards={human}"],
    }
    return common + per_recipe[name]


def test_every_packaged_recipe_is_covered():
    assert set(available()) == {"pretrain/tiny", "pretrain/sapiens", "pretrain/exemplar", "pretrain/metazoa",
                                "continue/tiny", "continue/add_species", "finetune/tiny", "finetune/celltype"}
    assert all(description for _, description in available().values())


TF_SIZED = {"pretrain/sapiens", "pretrain/exemplar", "pretrain/metazoa"}  # 2048 wide, 12 layers, as shipped


def _parameters(check_output: str) -> tuple[int, int]:
    counts = re.search(r"^objective \w+: ([\d,]+) parameters, ([\d,]+) trainable$", check_output, re.M).groups()
    return tuple(int(n.replace(",", "")) for n in counts)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in TF_SIZED else n  # ~5 s a build
                                  for n in sorted(available())])
def test_recipe_composes_and_builds_as_shipped(name, data, base, tmp_path):
    """Shipped sizes (no shrinking): the builder reads every key, the TF-sized model included; and
    `--check`'s parameter count (a new model built on the meta device) is the real model's."""
    overrides = [o for o in _recipe_overrides(name, data, base, tmp_path / "run") if not o.startswith(("model.",))]
    cfg = compose(name, overrides)
    run = build(cfg)
    assert run.objective.name == cfg.objective
    run.objective.prepare(run.checkpoint.model)
    params = [p for m in (run.checkpoint.model, *([run.checkpoint.task.module] if run.checkpoint.task else []))
              for p in m.parameters()]
    assert _parameters(check(cfg)) == (sum(p.numel() for p in params),
                                       sum(p.numel() for p in params if p.requires_grad))
    if name.startswith("pretrain/") and name != "pretrain/tiny":
        cfg = run.checkpoint.model_cfg
        assert (cfg.embed_dim, cfg.num_layers, cfg.num_heads, cfg.seq_len) == (2048, 12, 16, 2047)
        expected = {"sapiens": ["homo_sapiens"], "exemplar": EXEMPLAR, "metazoa": METAZOA}[name.split("/")[1]]
        assert [f.removesuffix("_gene.h5") for f, _ in run.checkpoint.vocab.files] == expected  # the official order
    assert not (tmp_path / "run").exists()  # building writes nothing


@pytest.mark.parametrize("name", sorted(available()))
def test_recipe_trains_two_steps_from_shards_exports_and_serves(name, data, base, tmp_path):
    out = tmp_path / "run"
    export = train(compose(name, _recipe_overrides(name, data, base, out)))
    metrics = pd.concat(pd.read_csv(f) for f in (out / "logs").glob("*/metrics.csv"))
    assert metrics["step"].max() >= 1 and np.isfinite(metrics["train/loss"].dropna()).all()
    finetuned = name.startswith("finetune/")
    assert main(["infer", "--checkpoint", str(export), "--data", str(data["human_h5ad"]), "--output",
                 str(tmp_path / "emb.h5ad"), "--outputs", "embeddings,llh" + ",predictions" * finetuned]) == 0
    served = anndata.read_h5ad(tmp_path / "emb.h5ad")
    assert np.isfinite(served.obsm["embeddings"]).all() and np.isfinite(served.obs["llh"]).all()
    if finetuned:
        classes = ["b_cell", "neuron", "t_cell"]
        task = json.loads((export / "task.json").read_text())
        assert task == {"task": "classification", "type": "classification", "label_key": "cell_type", "classes": classes}
        assert list(served.uns["cell_type_classes"]) == classes
        np.testing.assert_allclose(served.obsm["cell_type_proba"].sum(1), 1, rtol=1e-5)
        assert set(served.obs["cell_type_pred"]) <= set(classes)
    if name == "continue/add_species":
        assert [f for f, _ in load_checkpoint(export).vocab.files] == ["homo_sapiens_gene.h5", "mus_musculus_gene.h5"]


def test_a_preset_names_the_species_it_lacks(data, tmp_path):
    given = _embeddings(data, [s for s in EXEMPLAR if s != "danio_rerio"])
    with pytest.raises(RecipeError, match=r"exemplar\.yaml: the exemplar vocabulary has 5 species and "
                                          r"vocab\.embeddings lacks danio_rerio; add danio_rerio_gene\.h5"):
        build(compose("pretrain/exemplar", [f"data.shards={data['shards']['homo_sapiens', 'train']}", given,
                                            f"output_dir={tmp_path}"]), "recipes/pretrain/exemplar.yaml")
    with pytest.raises(RecipeError, match="mus_musculus is not a species of the sapiens vocabulary"):
        build(compose("pretrain/sapiens", [f"data.shards={data['shards']['homo_sapiens', 'train']}",
                                           _embeddings(data, ["homo_sapiens", "mus_musculus"]),
                                           f"output_dir={tmp_path}"]))


@pytest.mark.parametrize("override, message", [
    ("data.tokn_budget=5", r"tiny\.yaml: data\.tokn_budget: Key 'tokn_budget' not in 'DataSchema'"),
    ("model.num_heads=four", r"tiny\.yaml: model\.num_heads: Value 'four' of type 'str' could not be converted"),
    ("trainer.max_steps=[1]", r"tiny\.yaml: trainer\.max_steps: "),
    ("+optim.momentum=0.9", r"tiny\.yaml: optim\.momentum: Key 'momentum' not in 'OptimSchema'"),
    ("strategy=deepspeed_zero9", r"tiny\.yaml: .*Could not find 'strategy/deepspeed_zero9'"),
    # choices are Enums: Hydra refuses a value outside them while it composes, naming the choices
    ("data.source=zarr", r"tiny\.yaml: data\.source: Invalid value 'zarr', expected one of \[shards, h5ad\]"),
    ("data.on_corrupt=ignore", r"data\.on_corrupt: Invalid value 'ignore', expected one of \[skip, raise\]"),
    ("finetune.backbone=half", r"finetune\.backbone: Invalid value 'half', expected one of \[frozen, partial, full\]"),
    ("finetune.adapter=qlora", r"finetune\.adapter: Invalid value 'qlora', expected one of \[none, lora\]"),
    ("finetune.export=zip", r"finetune\.export: Invalid value 'zip', expected one of \[merged, adapter\]"),
    ("trainer.precision=bf17", r"trainer\.precision: Invalid value 'bf17', expected one of \[32, 64, "),
    ("trainer.accelerator=tpu9", r"trainer\.accelerator: Invalid value 'tpu9', expected one of \[cpu, gpu, "),
    ("logger.mode=loud", r"logger\.mode: Invalid value 'loud', expected one of \[online, offline, disabled\]"),
    # bounds sit beside the types: checked when the recipe is composed, before anything is built
    ("trainer.max_steps=-5", r"tiny\.yaml: trainer\.max_steps=-5 must be >= 1$"),
    ("optim.lr=nan", r"tiny\.yaml: optim\.lr=nan must be a finite number$"),
    ("data.token_budget=0", r"tiny\.yaml: data\.token_budget=0 must be >= 1$"),
    ("finetune.lora.dropout=1.0", r"tiny\.yaml: finetune\.lora\.dropout=1\.0 must be < 1$"),
    ("optim.betas=[0.9,1.5]", r"tiny\.yaml: optim\.betas\[1\]=1\.5 must be < 1$"),
    ("data.weights=[1,-1]", r"tiny\.yaml: data\.weights\[1\]=-1\.0 must be >= 0$"),
    ("trainer.devices=0", r"tiny\.yaml: trainer\.devices=0 must be a count \(at least 1\), -1 \(all\) or auto$"),
    ("model.embed_dim=31", r"tiny\.yaml: model: embed_dim 31 is not divisible by num_heads 4$"),
    ("model.seq_len=1", r"tiny\.yaml: model: seq_len is 1; it must be at least 2 \(\[START\] and one gene\)$"),
])
def test_schema_errors_are_one_line_with_key_and_recipe_file(override, message, data, tmp_path, capsys):
    with pytest.raises(RecipeError, match=message) as err:
        compose("pretrain/tiny", [f"data.shards={data['shards']['homo_sapiens', 'train']}", override])
    assert "\n" not in str(err.value)
    assert main(["train", "pretrain/tiny", f"output_dir={tmp_path / 'run'}", override]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before any run directory is made


def test_an_invalid_recipe_leaves_no_run_directory(data, tmp_path, capsys):
    """A value only the schema's bounds catch, given to a complete recipe that would otherwise train."""
    args = ["train", "pretrain/tiny", *SHRINK, f"data.shards={data['shards']['homo_sapiens', 'train']}",
            _embeddings(data, ["homo_sapiens"]), f"output_dir={tmp_path / 'run'}"]
    for bad in ("trainer.max_steps=-5", "optim.lr=nan", "data.token_budget=0"):
        assert main([*args, bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and bad.split("=")[0] in err[0], err
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, message", [
    ("model.likelihood=zinb", r"^recipe: model: unknown likelihood 'zinb' \(registered: .*ztp"),
    ("model.embed_dim=31", "not divisible by num_heads"),
    ("objective=distill", r"^recipe: unknown objective 'distill' \(registered: continue, finetune, pretrain"),
    ("logger=wandb logger.name=mlflow", r"^recipe: unknown logger 'mlflow' \(registered: csv, wandb"),
    ("strategy.name=fsdp9", r"^recipe: unknown strategy 'fsdp9' \(registered: auto, ddp, deepspeed_zero1"),
    ("data.pack=true data.pack_row_len=8", "pack_row_len 8 is shorter"),
    ("data.clip_counts=-1", "clip_counts -1.0 must be a positive number"),
])
def test_build_errors_before_compute(override, message, data, tmp_path):
    """Registry misses included: a tfx error naming the recipe file, never a KeyError."""
    with pytest.raises(TfxError, match=message) as err:
        train(compose("pretrain/tiny", [*SHRINK, f"data.shards={data['shards']['homo_sapiens', 'train']}",
                                        _embeddings(data, ["homo_sapiens"]), f"output_dir={tmp_path / 'run'}",
                                        *override.split()]))
    assert not isinstance(err.value, KeyError)
    assert not (tmp_path / "run").exists()


def test_a_plugin_head_is_chosen_by_the_model_config(data, tmp_path):
    from tfx.model.heads import CountHead
    from tfx.registry import HEADS

    @HEADS.register("count_double_bias", override=True)
    class DoubleBias(CountHead):
        pass

    run = build(compose("pretrain/tiny", [*SHRINK, f"data.shards={data['shards']['homo_sapiens', 'train']}",
                                          _embeddings(data, ["homo_sapiens"]), f"output_dir={tmp_path}",
                                          "model.count_head=count_double_bias"]))
    assert type(run.checkpoint.model.mu) is DoubleBias
    assert run.checkpoint.model_cfg.count_head == "count_double_bias"


def test_the_checkpoint_owns_preprocessing(data, tmp_path, caplog):
    """Clip and normalisation recorded by training are what inference and continuation read."""
    human = data["shards"]["homo_sapiens", "train"]
    first = train(compose("pretrain/tiny", [*SHRINK, f"data.shards={human}", _embeddings(data, ["homo_sapiens"]),
                                            f"output_dir={tmp_path / 'a'}", "data.clip_counts=1000"]))
    ckpt = load_checkpoint(first)
    assert ckpt.data_cfg.clip_counts == 1000
    cells, _ = file_tokens(ckpt, data["human_h5ad"])
    assert max(c.max() for _, c in cells) > 30  # counts up to 1000 are kept, not clipped at the default 30
    assert main(["infer", "--checkpoint", str(first), "--data", str(data["human_h5ad"]),
                 "--output", str(tmp_path / "a.h5ad"), "--outputs", "llh"]) == 0
    assert main(["infer", "--checkpoint", str(first), "--data", str(data["human_h5ad"]),
                 "--output", str(tmp_path / "b.h5ad"), "--outputs", "llh", "--clip-counts", "30"]) == 0
    assert "clip_counts=30.0 overrides checkpoint" in caplog.text
    llh_1000, llh_30 = (anndata.read_h5ad(tmp_path / f).obs["llh"].to_numpy() for f in ("a.h5ad", "b.h5ad"))
    assert not np.allclose(llh_1000, llh_30)  # the flag changes what the model reads
    second = train(compose("continue/tiny", [*SHRINK, f"init={first}", f"data.shards={human}",
                                             f"output_dir={tmp_path / 'b'}", "data.normalize_to_scale=1000"]))
    assert "normalize_to_scale=1000.0 overrides init checkpoint" in caplog.text
    cont = load_checkpoint(second).data_cfg
    assert (cont.normalize_to_scale, cont.clip_counts) == (1000, 1000)  # the new record; the clip carried over


@pytest.mark.slow
def test_recipes_ship_in_a_non_editable_install(data, tmp_path):
    """A wheel installed into a fresh directory has the recipes: list them and train one from elsewhere."""
    wheels, site, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # a clean copy: a build/ left in the checkout by an earlier build would hide what the wheel lacks
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "quickstart",
                                                               "runs", "__pycache__"))
    build_cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w",
                 str(wheels)]
    subprocess.run(build_cmd, check=True, capture_output=True, cwd=tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                    *map(str, wheels.glob("tfx-*.whl"))], check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import tfx; print(tfx.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))  # the installed copy, not the source tree
    listing = subprocess.run([sys.executable, "-m", "tfx.cli", "train", "--list"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, check=True).stdout
    assert "pretrain/sapiens" in listing and "finetune/celltype" in listing
    args = ["train", "pretrain/tiny", *SHRINK, f"data.shards={data['shards']['homo_sapiens', 'train']}",
            _embeddings(data, ["homo_sapiens"]), f"output_dir={tmp_path / 'run'}"]
    done = subprocess.run([sys.executable, "-m", "tfx.cli", *args], env=env, cwd=tmp_path, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "export" / "model_weights.pt").exists()


def test_a_users_recipe_file_and_directory(data, tmp_path, capsys):
    mine = tmp_path / "mine" / "pretrain"
    mine.mkdir(parents=True)
    (mine / "small.yaml").write_text("defaults:\n  - tfx_recipe\n  - /model: tiny\n  - /data: shards\n  - _self_\n"
                                     "description: my own recipe\noutput_dir: runs/mine\n")
    assert main(["train", "--list", "--recipes", str(tmp_path / "mine")]) == 0
    assert re.search(r"pretrain/small +my own recipe", capsys.readouterr().out)
    cfg = compose("pretrain/small", [f"data.shards={data['shards']['homo_sapiens', 'train']}"], tmp_path / "mine")
    assert cfg.model.embed_dim == 64 and cfg.trainer.max_steps == 200  # the group file, then the schema's default
    cfg = compose(str(mine / "small.yaml"), [f"data.shards={data['shards']['homo_sapiens', 'train']}"])
    assert cfg.description == "my own recipe"
    assert main(["train", "--list", "--recipes", str(tmp_path / "absent")]) == 2
    assert "absent: no such recipe directory" in capsys.readouterr().err


def test_a_regression_on_a_text_column_is_one_clear_error(data, base, tmp_path):
    from tfx.errors import InputError

    run = build(compose("finetune/tiny", [*SHRINK, f"init={base}", "data=shards", "task=regression",
                                          f"data.shards={data['shards']['homo_sapiens', 'train']}",
                                          "task.label_key=cell_type", f"output_dir={tmp_path}"]))
    with pytest.raises(InputError, match="obs 'cell_type' holds '.*', not a number"):
        next(iter(run.sources(0, 1)[0]))


@pytest.mark.parametrize("value", ["nan", "-1", "0", "inf"])
def test_infer_refuses_a_clip_that_is_not_a_positive_number(value, data, base, tmp_path, capsys):
    out = tmp_path / "emb.h5ad"
    assert main(["infer", "--checkpoint", str(base), "--data", str(data["human_h5ad"]), "--output", str(out),
                 f"--clip-counts={value}"]) == 2
    assert "argument --clip-counts" in capsys.readouterr().err and not out.exists()  # refused when parsed


def test_finetuning_on_a_label_column_the_shards_lack_is_one_line(data, base, tmp_path):
    from tfx.errors import InputError

    with pytest.raises(InputError, match=r"no manifest lists the values of obs 'tissue_type'; re-write the shards "
                                         r"with tfx shard --obs-keys tissue_type, or name the classes"):
        build(compose("finetune/tiny", [*SHRINK, f"init={base}", "data=shards", "task.label_key=tissue_type",
                                        f"data.shards={data['shards']['homo_sapiens', 'train']}",
                                        f"output_dir={tmp_path}"]))


def test_check_prints_the_resolved_recipe_and_parameters_and_writes_nothing(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = [f"data.shards={data['shards']['homo_sapiens', 'train']}", _embeddings(data, ["homo_sapiens"]),
              f"output_dir={tmp_path / 'run'}"]
    assert main(["train", "pretrain/tiny", *common[:1], "--check", *common[1:], "trainer.max_steps=7"]) == 0
    out = capsys.readouterr().out
    assert "objective: pretrain" in out and "max_steps: 7" in out  # the recipe as resolved
    real = build(compose("pretrain/tiny", common)).checkpoint.model
    assert _parameters(out)[0] == sum(p.numel() for p in real.parameters())
    assert main(["train", "--check", "pretrain/sapiens", *common]) == 0
    out = capsys.readouterr().out
    assert "embed_dim: 2048" in out and "precision: bf16-mixed" in out
    assert _parameters(out)[0] > 300_000_000
    assert main(["train", "pretrain/tiny", "--check", "--bogus", *common]) == 2  # still a usage error
    assert list(tmp_path.iterdir()) == []  # no run directory, no log, nothing
    # the TF-sized model --check counts takes no memory: its weights are on the meta device
    meta = build(compose("pretrain/sapiens", common), device="meta").checkpoint.model
    table = meta.gene_embeddings.embedding.weight
    assert all(p.is_meta for p in meta.parameters() if p is not table)


@pytest.mark.slow  # starts a tfx command in a new process (torch's import: ~4 s)
def test_build_loads_its_own_registries(data, tmp_path):
    """`from tfx.recipe import build` on its own (nothing has imported tfx.train) builds a recipe; its
    objective comes from the registry, and Lightning is still not imported."""
    overrides = [f"data.shards={data['shards']['homo_sapiens', 'train']}", _embeddings(data, ["homo_sapiens"]),
                 f"output_dir={tmp_path / 'run'}"]
    code = ("import sys; from tfx.recipe import build, compose; "
            f"run = build(compose('pretrain/tiny', {overrides!r})); "
            "print(type(run.objective).__module__, run.objective.name, "
            "sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'deepspeed')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "tfx.train.objectives.pretrain pretrain []"


def test_a_gpu_recipe_on_cpu_trains_in_fp32_and_says_so(data, base, tmp_path, caplog):
    """`trainer.accelerator=cpu` on a bf16 recipe: fp32 and one line saying so; an explicit
    trainer.precision on the command line is kept."""
    from tfx.train.run import lightning_trainer

    common = [f"init={base}", f"data.shards={data['shards']['homo_sapiens', 'train']}", f"output_dir={tmp_path}",
              "logger=csv", "trainer.accelerator=cpu"]
    with caplog.at_level("INFO", logger="tfx.recipe.compose"):
        cfg = compose("finetune/celltype", common)
    lines = [r.getMessage() for r in caplog.records if r.name == "tfx.recipe.compose"]
    assert lines == ["trainer.accelerator=cpu: precision bf16-mixed -> 32 (fp32; half precision is slow on CPU), "
                     "devices -1 -> 1 (one process); set them on the command line to keep the recipe's"]
    assert lightning_trainer(build(cfg), []).precision == "32-true"
    caplog.clear()
    with caplog.at_level("INFO", logger="tfx.recipe.compose"):
        cfg = compose("finetune/celltype", [*common, "trainer.precision=bf16-mixed", "trainer.devices=1"])
    assert not [r for r in caplog.records if r.name == "tfx.recipe.compose"]
    assert lightning_trainer(build(cfg), []).precision == "bf16-mixed"
    assert compose("finetune/celltype", [*common[:-1]]).trainer.precision == "bf16-mixed"  # on GPUs, as written
    with pytest.raises(RecipeError, match=r"trainer\.devices=-1 \(every GPU\) has no meaning with "
                                          r"trainer\.accelerator=cpu"):
        compose("finetune/celltype", [*common, "trainer.devices=-1"])
