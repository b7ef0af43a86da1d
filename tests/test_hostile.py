"""Hostile inputs and faults, through the real `tfx` commands: received files never run code, outputs
never delete what tfx did not write, every run ends with an honest exit code and one line.
See docs/security.md for the promises these tests hold tfx to."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported here, its log handler writes to the session's stderr, not one test's)
import pytest
import torch

from conftest import built_once
from tfx.data.loader import resolve_urls
from tfx.data.shards import write_shards
from tfx.errors import InputError
from tfx.synth import synth_atlas

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["model.embed_dim=16", "model.num_heads=2", "model.num_layers=1", "model.model_dim=32", "model.seq_len=31",
         "model.gene_head_hidden_dim=32", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32",
         "trainer.log_every_n_steps=1", "strategy=auto", "logger=csv", "data.num_workers=0",
         "data.token_budget=256", "data.max_cells=8", "data.shuffle_buffer=20", "data.val_shards=null"]


def tfx(*args, timeout=300, **kw) -> subprocess.CompletedProcess:
    """The `tfx` command in its own process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **kw.pop("env", {})}
    return subprocess.run([sys.executable, "-m", "tfx.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def _main(*args) -> int:
    """tfx's ``main`` in this process; the log handler it adds is removed after (it writes to the
    stderr of the moment it ran: a test's captured one)."""
    from tfx.cli import main

    handlers = logging.root.handlers[:]
    try:
        return main([str(a) for a in args])
    finally:
        logging.root.handlers[:] = handlers


@pytest.fixture
def cli(capsys):
    """The `tfx` command in this process (faster: torch is imported once); same result fields as ``tfx``."""
    def run(*args):
        capsys.readouterr()
        code = _main(*args)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def one_line_error(proc: subprocess.CompletedProcess, code: int = 2) -> str:
    """The failure is one line on stderr naming the problem (no traceback), with the expected exit code."""
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    """One synthetic species: its h5ad, gene embeddings and six shards of 20 cells."""
    def build(tmp):
        s = synth_atlas(tmp / "synth", species=1, cells=120, genes=200, seed=0)["species"]["synth_alpha"]
        write_shards([s["h5ad"]], "synth_alpha", tmp / "shards", cells_per_shard=20, processes=1)

    tmp = built_once(tmp_path_factory, "hostile", build)
    return {"h5ad": tmp / "synth" / "synth_alpha.h5ad", "genes": tmp / "synth" / "synth_alpha_gene.h5",
            "shards": tmp / "shards"}


def train_args(atlas, out, *extra, shards=None):
    return ["train", "pretrain/tiny", *TRAIN, f"data.shards={shards or atlas['shards']}",
            f"vocab.embeddings=[{atlas['genes']}]", f"output_dir={out}", *extra]


# ---- no code runs from a received file ---------------------------------------------------------

class _Payload:
    """Pickled, it calls os.system when unpickled: what a crafted checkpoint file would hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_a_crafted_zero_checkpoint_runs_no_code(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    (run / "checkpoint_template").mkdir(parents=True)
    (run / "checkpoint_template" / "config.json").write_text("{}")
    shard_dir = run / "checkpoints" / "final.ckpt" / "checkpoint"
    shard_dir.mkdir(parents=True)
    (shard_dir.parent / "latest").write_text("checkpoint")
    payload = {"module": _Payload(f"touch {marker}"), "buffer_names": [], "param_shapes": []}
    torch.save(payload, shard_dir / "mp_rank_00_model_states.pt")
    torch.save({"optimizer_state_dict": payload}, shard_dir / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    line = one_line_error(tfx("export", run, "--output", tmp_path / "out"))
    assert "final.ckpt/checkpoint: holds pickled objects" in line and "refused" in line, line
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_manifest_cannot_name_a_command_or_a_path_outside(atlas, tmp_path, cli, monkeypatch):
    marker = tmp_path / "pwned"
    received = tmp_path / "received"
    shutil.copytree(atlas["shards"], received)
    manifest = json.loads((received / "manifest.json").read_text())

    def with_entry(name):
        manifest["shards"][0]["name"] = name
        (received / "manifest.json").write_text(json.dumps(manifest))

    with_entry(f"pipe:touch {marker}")
    # named from its own directory, the manifest's entries are not prefixed: 'pipe:' would reach webdataset
    monkeypatch.chdir(received)
    line = one_line_error(cli(*train_args(atlas, tmp_path / "run", "trainer.max_steps=1", shards="manifest.json")))
    assert "manifest.json: shard entry 'pipe:touch" in line and "refused" in line, line
    assert not marker.exists() and not (tmp_path / "run" / "checkpoints").exists()
    for entry in ["../shards/shard-000000.tar", "/etc/passwd", "http://example.org/a.tar", "sub/x.tar", 7]:
        with_entry(entry)
        with pytest.raises(InputError, match=r"manifest.json: shard entry .* refused"):
            resolve_urls(str(received))
    with_entry("shard-000000.tar")
    assert resolve_urls(str(received))[0] == f"{received}/shard-000000.tar"


def test_a_gene_id_that_is_a_path_is_refused(tmp_path):
    fasta = tmp_path / "p.fa"
    fasta.write_text(">P1 gene:ENSG1\nMKV\n>P2 gene:../../evil\nMKL\n")
    line = one_line_error(tfx("embed-proteins", "--fasta", fasta, "--model", tmp_path / "none.pt",
                              "--output", tmp_path / "x_gene.h5"))
    assert "p.fa: protein P2 has gene id '../../evil'" in line
    assert not list(tmp_path.parent.rglob("evil*"))


# ---- outputs never delete what tfx did not write -------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(atlas, tmp_path_factory):
    """A finished two-step run (exported), trained in this process."""
    def build(root):
        assert _main(*train_args(atlas, root / "run", "trainer.max_steps=2")) == 0

    return built_once(tmp_path_factory, "hostile_run", build) / "run"


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns for p in sorted(path.rglob("*"))}


def test_export_never_replaces_what_it_did_not_write(run_dir, tmp_path, monkeypatch, cli):
    before = _tree(run_dir)
    for target in [run_dir, run_dir / "checkpoints", run_dir / "export" / "vocabs", run_dir.parent]:
        line = one_line_error(cli("export", run_dir, "--output", target, "--overwrite"))
        assert "lies in the input" in line or "which the command does not write" in line, line
    for flags in ([], ["--overwrite"]):  # the run's own export/ too: only tfx train fills it
        line = one_line_error(cli("export", run_dir, "--output", run_dir / "export", *flags))
        assert f"--output {run_dir / 'export'}: lies in the input {run_dir}" in line, line
    assert _tree(run_dir) == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    assert "holds notes.txt, which the command does not write" in one_line_error(
        cli("add-species", "--checkpoint", run_dir / "export", "--embeddings", "x.h5", "--output", mine, "--overwrite"))
    assert (mine / "notes.txt").read_text() == "my notes"
    monkeypatch.chdir(mine)
    assert "--output .: is not empty; pass --overwrite" in one_line_error(cli("export", run_dir, "--output", "."))
    assert "--output .: holds notes.txt" in one_line_error(cli("export", run_dir, "--output", ".", "--overwrite"))
    # an existing checkpoint is replaced only with --overwrite; a killed run's temporaries are cleaned
    stale = tmp_path / f".again.tmp-{_dead_pid()}"
    stale.mkdir()
    assert cli("export", run_dir, "--output", tmp_path / "again").returncode == 0
    assert "is not empty; pass --overwrite" in one_line_error(cli("export", run_dir, "--output", tmp_path / "again"))
    assert cli("export", run_dir, "--output", tmp_path / "again", "--overwrite").returncode == 0
    assert not stale.exists() and (tmp_path / "again" / "model_weights.pt").exists()
    vocabs = tmp_path / "again" / "vocabs"  # --overwrite replaces a checkpoint, never a user's file inside it
    (vocabs / "README_mine.txt").write_text("mine")
    assert "holds vocabs/README_mine.txt, which the command does not write" in one_line_error(
        cli("export", run_dir, "--output", tmp_path / "again", "--overwrite"))
    (vocabs / "README_mine.txt").unlink()
    (vocabs / "mysub").mkdir()
    assert "holds vocabs/mysub, which the command does not write" in one_line_error(
        cli("export", run_dir, "--output", tmp_path / "again", "--overwrite"))
    assert (vocabs / "mysub").is_dir()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_swap_killed_between_its_renames_keeps_the_old_directory(tmp_path):
    from tfx.atomic import atomic_path

    old = tmp_path / f".ckpt.old-{_dead_pid()}"  # the rename of ckpt done, the new one's not yet
    old.mkdir()
    (old / "config.json").write_text("the previous checkpoint")
    with atomic_path(tmp_path / "other") as tmp:
        tmp.write_text("x")
    assert old.exists()  # another path's leftovers are not touched
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "ckpt"):
            raise RuntimeError("killed")
    assert (tmp_path / "ckpt" / "config.json").read_text() == "the previous checkpoint" and not old.exists()


def test_a_run_of_another_model_is_refused_before_anything_changes(atlas, run_dir, cli):
    before = _tree(run_dir)
    line = one_line_error(cli(*train_args(atlas, run_dir, "trainer.max_steps=4", "model.embed_dim=32")))
    assert "holds a run of another model" in line and "embed_dim 16 -> 32" in line, line
    assert _tree(run_dir) == before
    assert cli("export", run_dir, "--output", run_dir.parent / "still_exports").returncode == 0


# ---- every run ends, and ends honestly ---------------------------------------------------------------

def _losses(run: Path) -> dict[int, float]:
    """train/loss by step, over every start of the run."""
    import pandas as pd

    frames = [pd.read_csv(f) for f in sorted((run / "logs").glob("*/metrics.csv"))]
    m = pd.concat(frames).dropna(subset=["train/loss"])
    return dict(zip(m["step"].astype(int), m["train/loss"]))


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_resumed_run_equals_an_uninterrupted_one(atlas, tmp_path, cli):
    """SLURM's preemption mid-shard: a checkpoint at the next step, exit 143, and the resumed run
    trains on exactly the batches the uninterrupted one does (those two run in this process). The
    run's output, as a user sees it, carries no library's adverts or deprecation notes."""
    import time

    common = ["trainer.max_steps=24", "trainer.checkpoint_every_n_steps=3", "optim.total_steps=24"]
    split = tmp_path / "split"
    proc = subprocess.Popen([sys.executable, "-m", "tfx.cli", *train_args(atlas, split, *common)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    while not (split / "checkpoints" / "last.ckpt").exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143 and "Traceback" not in err, err[-3000:]
    assert "Tip:" not in out + err and "deprecat" not in (out + err).lower(), (out + err)[-3000:]
    line = next(x for x in err.splitlines() if "interrupted:" in x)
    stopped = int(line.split("stopped at step ")[1].split()[0])
    assert 3 <= stopped < 24 and not (split / "export").exists(), line
    assert "run the same command again to resume" in line
    saved = torch.load(split / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == stopped  # saved at the signal (periodic checkpoints come every 3 steps)

    assert cli(*train_args(atlas, split, *common)).returncode == 0  # resume=auto
    assert cli(*train_args(atlas, tmp_path / "full", *common)).returncode == 0
    full, resumed = _losses(tmp_path / "full"), _losses(split)
    assert sorted(resumed) == sorted(full) and len(full) == 24
    for step in full:
        assert resumed[step] == pytest.approx(full[step], rel=1e-4), step
    a = torch.load(split / "export" / "model_weights.pt", weights_only=True)
    b = torch.load(tmp_path / "full" / "export" / "model_weights.pt", weights_only=True)
    # The per-step losses above are the exactness check. A process restart on CPU is not bitwise
    # reproducible (MKL kernels depend on allocation), and rarely-active ReLU units of the count head
    # turn that float noise into bias differences up to ~1e-3; a replayed wrong batch moves far more.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-2, atol=5e-3)


@pytest.mark.slow
def test_a_source_of_corrupt_shards_ends_the_run_with_one_line(atlas, tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"shard-{i:06d}.tar").write_bytes(os.urandom(4000))
    # every shard corrupt: the run stops with the source's name (it looped forever, 18,000 warnings a second)
    line = one_line_error(tfx(*train_args(atlas, tmp_path / "a", "trainer.max_steps=2", shards=junk), timeout=120))
    assert "source junk: none of its 3 shards" in line, line
    assert not (tmp_path / "a" / "checkpoints" / "last.ckpt").exists()


def test_a_truncated_checkpoint_is_one_line(atlas, run_dir, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    line = one_line_error(cli(*train_args(atlas, run, "trainer.max_steps=4")))
    assert "last.ckpt: unreadable" in line and "resume=" in line, line
    final = run / "checkpoints" / "final.ckpt"
    final.write_bytes(final.read_bytes()[:5000])
    assert "final.ckpt: not a readable training checkpoint" in one_line_error(
        cli("export", run, "--output", tmp_path / "out"))


def _big_h5ad(path: Path, cells: int = 3000) -> Path:
    import numpy as np

    from conftest import write_h5ad

    rng = np.random.default_rng(0)
    counts = (rng.random((cells, 300)) < 0.1) * rng.integers(1, 20, (cells, 300))
    return write_h5ad(path, [f"ENSG{i:011d}" for i in range(300)], counts)


def _children(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pids) -> list[int]:
    import psutil

    return [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


def _ctrl_c_as_in_a_terminal() -> None:
    """A command started in the background by a shell (nohup, `&`, some CI runners) inherits SIGINT
    ignored; a terminal's Ctrl-C finds it at its default, which these tests reproduce."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C"])
def test_shard_workers_end_with_their_parent(tmp_path, how):
    import time

    data = _big_h5ad(tmp_path / "a.h5ad")
    proc = subprocess.Popen([sys.executable, "-m", "tfx.cli", "shard", "--input", str(data), "--species", "homo_sapiens",
                             "--output", str(tmp_path / "shards"), "--cells-per-shard", "20", "--processes", "2"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            start_new_session=True, preexec_fn=_ctrl_c_as_in_a_terminal)
    workers = []
    while len(workers) < 2 and proc.poll() is None:
        workers = _children(proc.pid)
        time.sleep(0.01)
    assert len(workers) == 2, proc.communicate()[1][-2000:]
    if how == "kill -9":
        proc.kill()
    else:  # a terminal's Ctrl-C reaches the whole process group
        os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    deadline = time.time() + 10
    while _alive(workers) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(workers)
    if how == "Ctrl-C":
        assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
        assert "tfx shard: interrupted (Ctrl-C)" in err
        # a re-run completes it, byte-identical shards
        assert tfx("shard", "--input", data, "--species", "homo_sapiens", "--output", tmp_path / "shards",
                   "--cells-per-shard", "20", "--processes", "2").returncode == 0


def test_an_input_edited_in_place_is_not_served_from_old_shards(tmp_path, cli):
    import h5py

    data = _big_h5ad(tmp_path / "a.h5ad", cells=50)
    args = ["shard", "--input", data, "--species", "homo_sapiens", "--output", tmp_path / "shards", "--processes", "1"]
    assert cli(*args).returncode == 0
    size = data.stat().st_size
    with h5py.File(data, "r+") as f:
        f["X"]["data"][0] += 1  # one count changed: same size, same shape
    assert data.stat().st_size == size
    line = one_line_error(cli(*args))
    assert "holds shards of a.h5ad as it was before it changed" in line, line


# ---- every option and input checked: one line, exit 2 ---------------------------------------------

@pytest.mark.parametrize("option,value", [("--batch-size", "0"), ("--token-budget", "0"), ("--chunk-size", "-1"),
                                          ("--chunk-size", "0"), ("--clip-counts", "nan"), ("--clip-counts", "-1"),
                                          ("--clip-counts", "0"), ("--clip-counts", "inf"), ("--devices", "0"),
                                          ("--batch-size", "many")])
def test_numeric_options_are_checked_when_parsed(cli, option, value):
    line = one_line_error(cli("infer", "--checkpoint", "ckpt", "--data", "in.h5ad", "--output", "o.h5ad", option, value))
    assert f"argument {option}" in line and f"{value} is not" in line, line


def test_every_option_has_help_and_numeric_ones_their_range():
    from tfx.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    parsers = dict(sub.choices)
    questions = next(a for a in parsers.pop("prompt")._actions if a.dest == "query")
    parsers |= {f"prompt {q}": p for q, p in questions.choices.items()}
    for name, parser in parsers.items():
        for action in parser._actions:
            assert action.help, (name, action.option_strings or action.dest)
            spec = getattr(action.type, "spec", None)  # the option's declaration (tfx.options.Spec)
            if spec is not None and spec.range is not None and action.help != argparse.SUPPRESS:
                assert "%(type)s" in action.help, (name, action.option_strings)
    text = sub.choices["infer"].format_help()
    assert "an integer >= 1 (the reference's default is 8) (default: 256)" in " ".join(text.split())
    assert "(default: 32)" in text and "--checkpoint-path" in text


def _broken_checkpoints(export: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """A damaged copy of ``export`` per case, with the start of the expected error line."""
    import numpy as np

    from tfx.vocab import write_gene_embeddings

    def copy(name, edit):
        path = tmp / name
        shutil.copytree(export, path)
        edit(path)
        return path

    def config(edit):
        def apply(path):
            raw = json.loads((path / "config.json").read_text())
            (path / "config.json").write_text(json.dumps(edit(raw)))
        return apply

    def heads(raw):
        raw["model"]["model_config"]["num_heads"] = "four"
        return raw

    weights = export / "model_weights.pt"
    write_gene_embeddings(tmp / "wrong_gene.h5", ["ENSX1", "ENSX2"], np.ones((2, 7), np.float32))
    return {
        "invalid json": (copy("a", lambda p: (p / "config.json").write_text("{nope")), "config.json: not valid JSON"),
        "json list": (copy("b", config(lambda raw: [raw])), "config.json: holds a JSON list"),
        "num_heads four": (copy("c", config(heads)), "config.json: num_heads is 'four', not an int"),
        "truncated weights": (copy("d", lambda p: (p / "model_weights.pt").write_bytes(weights.read_bytes()[:4000])),
                              "model_weights.pt: not a readable torch weights file"),
        "random weights": (copy("e", lambda p: (p / "model_weights.pt").write_bytes(os.urandom(4000))),
                           "model_weights.pt: not a readable torch weights file"),
        "assay vocab": (copy("f", lambda p: (p / "vocabs" / "assay_vocab.json").write_text('{"a": ')),
                        "assay_vocab.json: not a JSON object"),
        "wrong dimension": (export, "wrong_gene.h5: embeddings of dimension 7, the checkpoint's are"),
    }


def test_broken_checkpoints_and_inputs_are_one_line(run_dir, atlas, tmp_path, cli):
    import anndata
    import numpy as np

    cases = _broken_checkpoints(run_dir / "export", tmp_path)
    for case, (ckpt, message) in cases.items():
        extra = ["--species-embedding", tmp_path / "wrong_gene.h5"] if case == "wrong dimension" else []
        line = one_line_error(cli("infer", "--checkpoint", ckpt, "--data", atlas["h5ad"], "--output",
                                  tmp_path / "o.h5ad", *extra))
        assert message in line, (case, line)
    (tmp_path / "dir.h5ad").mkdir()
    assert "--output" in one_line_error(cli("infer", "--checkpoint", run_dir / "export", "--data", atlas["h5ad"],
                                            "--output", tmp_path / "dir.h5ad"))
    for value, message in [(np.inf, "X holds infinite values"), (1e30, "X holds a count of 1e+30")]:
        adata = anndata.read_h5ad(atlas["h5ad"])
        adata.X = adata.X.toarray()
        adata.X[3, 5] = value
        adata.write_h5ad(tmp_path / "bad.h5ad")
        line = one_line_error(cli("infer", "--checkpoint", run_dir / "export", "--data", tmp_path / "bad.h5ad",
                                  "--output", tmp_path / "o.h5ad"))
        assert message in line, line
    assert not (tmp_path / "o.h5ad").exists()


def test_nan_weights_are_reported_with_the_number_of_cells(run_dir, atlas, tmp_path, cli, caplog):
    import anndata

    ckpt = tmp_path / "nan"
    shutil.copytree(run_dir / "export", ckpt)
    state = torch.load(ckpt / "model_weights.pt", weights_only=True)
    name = next(k for k in state if k.endswith("linear1.weight"))
    state[name][0, 0] = float("nan")
    torch.save(state, ckpt / "model_weights.pt")
    assert cli("infer", "--checkpoint", ckpt, "--data", atlas["h5ad"], "--output", tmp_path / "o.h5ad").returncode == 0
    n = anndata.read_h5ad(atlas["h5ad"]).n_obs
    assert f"{n} of {n} cells have NaN or infinite outputs" in caplog.text


# ---- the reference's flags, the overlap report, progress in a log, quiet libraries -----------------

@pytest.mark.slow  # starts a tfx command in a new process (torch's import: ~4 s)
def test_reference_flags_overlap_and_progress_in_a_log(run_dir, atlas, tmp_path):
    import anndata

    adata = anndata.read_h5ad(atlas["h5ad"])
    adata.var["ensembl_id"] = [g if i % 25 == 0 else f"OTHER{i}" for i, g in enumerate(adata.var["ensembl_id"])]
    adata.write_h5ad(tmp_path / "few.h5ad")  # 4% of its genes in the vocabulary
    done = tfx("infer", "--checkpoint-path", run_dir / "export", "--data-file", tmp_path / "few.h5ad",
               "--output-path", tmp_path / "out", "--num-gpus", "1", "--gene-col-name", "ensembl_id")
    assert done.returncode == 0, done.stderr[-3000:]
    assert anndata.read_h5ad(tmp_path / "out" / "embeddings.h5ad").n_obs == adata.n_obs
    assert "tfx: note: --checkpoint-path is the reference's name for --checkpoint" in done.stderr
    assert "tfx: note: --num-gpus is the reference's name for --devices" in done.stderr
    assert "8 of 200 genes (4%) are in the model's vocabulary" in done.stderr
    assert "WARNING" in next(x for x in done.stderr.splitlines() if "8 of 200 genes" in x)
    assert "INFO tfx.progress: infer: 100%" in done.stderr  # stderr is a file here: progress is logged
    assert "Traceback" not in done.stderr


def test_exit_codes_agree_across_commands(cli, tmp_path):
    assert "argument --outputs: umap is not a comma list of" in one_line_error(
        cli("infer", "--checkpoint", "c", "--data", "d.h5ad", "--output", "o.h5ad", "--outputs", "umap"))
    assert "tfx synth: error:" in one_line_error(cli("synth", "--output", tmp_path / "s", "--genes", "3"))
    assert "name a recipe" in one_line_error(cli("train"))
    assert "argument --species" in one_line_error(cli("synth", "--output", tmp_path / "s", "--species", "9"))


@pytest.mark.slow  # starts a tfx command in a new process (torch's import: ~4 s)
@pytest.mark.parametrize("sig, code, name", [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_in_infer_ends_it_in_one_line_without_a_traceback(run_dir, atlas, tmp_path, sig, code, name):
    import anndata

    adata = anndata.read_h5ad(atlas["h5ad"])
    anndata.concat([adata] * 30, index_unique="-", merge="first").write_h5ad(tmp_path / "many.h5ad")
    proc = subprocess.Popen([sys.executable, "-m", "tfx.cli", "infer", "--checkpoint", str(run_dir / "export"),
                             "--data", str(tmp_path / "many.h5ad"), "--output", str(tmp_path / "o.h5ad"),
                             "--batch-size", "1"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_ctrl_c_as_in_a_terminal)
    lines = []
    while not any("tfx.progress" in x for x in lines) and proc.poll() is None:
        lines.append(proc.stderr.readline())
    proc.send_signal(sig)
    err = "".join(lines) + proc.communicate(timeout=180)[1]
    assert proc.returncode == code and "Traceback" not in err, err[-3000:]
    assert f"tfx infer: interrupted ({name})" in err
    assert not (tmp_path / "o.h5ad").exists() and not list(tmp_path.glob(".o.h5ad.tmp-*"))


def test_download_never_replaces_a_directory_it_did_not_write(tmp_path, cli):
    mine = tmp_path / "checkpoints" / "tf_sapiens"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    line = one_line_error(cli("download", "tf-sapiens", "--checkpoint-dir", tmp_path / "checkpoints",
                              "--base-url", "http://127.0.0.1:9"))  # refused before any connection
    assert "tf_sapiens: exists and is not a complete tf_sapiens release" in line, line
    assert (mine / "notes.txt").read_text() == "my notes"


# ---- the re-run of issue 26's trial: what still broke --------------------------------------------

@pytest.fixture
def mounted(tmp_path):
    """mount(name, options): a small tmpfs (a read-only place, a disk that fills up); needs root, as CI has."""
    mounts = []

    def mount(name, options):
        where = tmp_path / name
        where.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode:
            pytest.skip("mounting a tmpfs needs root")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", str(where)], check=True)


def test_shard_and_train_refuse_a_read_only_output_before_any_work(atlas, tmp_path, cli, mounted):
    ro = mounted("ro", "ro,size=64k")
    line = one_line_error(cli("shard", "--input", atlas["h5ad"], "--species", "synth_alpha", "--output", ro / "sh",
                              "--processes", "1"))  # was exit 1, "Read-only file system ...: free the space"
    assert f"--output {ro / 'sh'}: {ro} is not a writable directory" in line, line
    line = one_line_error(cli(*train_args(atlas, ro / "run", "trainer.max_steps=1")))
    assert f"output_dir={ro / 'run'}: {ro} is not a writable directory" in line, line
    assert not list(ro.iterdir())


def test_a_full_disk_in_generate_export_and_train_is_exit_1_with_nothing_half_written(run_dir, atlas, tmp_path,
                                                                                      cli, mounted):
    disk = mounted("disk", "size=64k")
    (disk / "filler").write_bytes(b"\0" * 48_000)
    for argv in (["generate", "--checkpoint", run_dir / "export", "--species", "synth_alpha", "--n-cells", "2000",
                  "--seed", "1", "--output", disk / "cells.h5ad"],  # was a segmentation fault inside HDF5
                 ["synth", "--output", disk / "atlas", "--cells", "50", "--genes", "60"],
                 ["export", run_dir, "--output", disk / "ckpt"],  # was a traceback (shutil.Error, then torch's)
                 train_args(atlas, disk / "run", "trainer.max_steps=1")):  # was torch's RuntimeError
        proc = cli(*argv)
        assert proc.returncode == 1, (argv[0], proc.stderr[-2000:])
        err = proc.stderr.strip().splitlines()
        assert err[-1].startswith(f"tfx {argv[0]}: failed: No space left on device"), (argv[0], err[-3:])
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert sorted(p.name for p in disk.rglob("*")) == ["filler"], argv[0]  # no file, no folder it made


@pytest.mark.parametrize("override,message", [
    ("output_dir=${oc.env:TFX_UNSET_VARIABLE}", "output_dir: KeyError raised while resolving interpolation"),
    ("trainer.max_steps=${oc.env:HOME}", "trainer.max_steps: While dereferencing interpolation")])
def test_a_recipe_value_that_does_not_resolve_is_one_line(atlas, tmp_path, cli, monkeypatch, override, message):
    monkeypatch.delenv("TFX_UNSET_VARIABLE", raising=False)
    monkeypatch.chdir(tmp_path)
    line = one_line_error(cli(*train_args(atlas, tmp_path / "run", "trainer.max_steps=1")[:-1], override))
    assert message in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_recipe_file_with_a_python_tag_is_one_line_and_runs_nothing(tmp_path, cli):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"description: !!python/object/apply:os.system ['touch {marker}']\n")
    line = one_line_error(cli("train", recipe, f"output_dir={tmp_path / 'run'}"))  # was yaml's ConstructorError
    assert "evil.yaml: could not determine a constructor for the tag" in line, line
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_refused_training_run_leaves_its_output_dir_as_it_found_it(run_dir, atlas, tmp_path, cli):
    import anndata

    cells = anndata.read_h5ad(atlas["h5ad"])
    cells.obs["age"] = ["old" if i % 2 else "young" for i in range(cells.n_obs)]
    cells.write_h5ad(tmp_path / "cells.h5ad")
    finetune = ["train", "finetune/tiny", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32",
                "strategy=auto", "logger=csv", "data.num_workers=0", f"init={run_dir / 'export'}",
                f"data.files=[{tmp_path / 'cells.h5ad'}]", f"data.val_files=[{tmp_path / 'cells.h5ad'}]",
                "trainer.max_steps=1", "task=regression", "task.label_key=age"]
    line = one_line_error(cli(*finetune, f"output_dir={tmp_path / 'new'}"))
    assert "obs 'age' holds 'young', not a number" in line, line
    (tmp_path / "empty").mkdir()
    one_line_error(cli(*finetune, f"output_dir={tmp_path / 'empty'}"))
    junk = tmp_path / "junk"
    junk.mkdir()
    for i in range(3):
        (junk / f"shard-{i:06d}.tar").write_bytes(os.urandom(4000))
    one_line_error(cli(*train_args(atlas, tmp_path / "pre", "trainer.max_steps=1", shards=junk)))
    assert not (tmp_path / "new").exists() and not (tmp_path / "pre").exists()  # had checkpoint_template, .tfx.lock
    assert not list((tmp_path / "empty").iterdir())


def test_a_training_output_dir_inside_what_the_run_reads_is_refused(run_dir, atlas, tmp_path, cli):
    """As every command's outputs: the shards, h5ad files, gene embeddings and init checkpoint a run reads."""
    shards = tmp_path / "shards"
    shutil.copytree(atlas["shards"], shards)
    before = sorted(p.name for p in shards.iterdir())
    for out in (shards / "run", shards):
        line = one_line_error(cli(*train_args(atlas, out, "trainer.max_steps=1", shards=shards)))
        assert f"output_dir={out}: lies in the input {shards}, which the command reads" in line, line
    assert sorted(p.name for p in shards.iterdir()) == before
    init = tmp_path / "init"
    shutil.copytree(run_dir / "export", init)
    line = one_line_error(cli("train", "finetune/tiny", "trainer.accelerator=cpu", "trainer.devices=1",
                              f"init={init}", f"data.files=[{atlas['h5ad']}]", "trainer.max_steps=1",
                              f"output_dir={init / 'ft'}"))
    assert f"output_dir={init / 'ft'}: lies in the input {init}" in line, line
    assert not (init / "ft").exists()


def test_a_shard_run_refused_for_a_bad_cell_leaves_its_output_as_it_found_it(atlas, tmp_path, cli):
    import anndata

    cells = anndata.read_h5ad(atlas["h5ad"])
    cells.X = cells.X.toarray()
    cells.X[3, 5] = float("nan")
    cells.write_h5ad(tmp_path / "a.h5ad")
    args = ["shard", "--input", tmp_path / "a.h5ad", "--species", "synth_alpha", "--processes", "1"]
    line = one_line_error(cli(*args, "--output", tmp_path / "new"))
    assert "a.h5ad: X holds NaN" in line, line
    (tmp_path / "empty").mkdir()
    one_line_error(cli(*args, "--output", tmp_path / "empty"))
    assert not (tmp_path / "new").exists() and not list((tmp_path / "empty").iterdir())  # had .progress/plan.json
    cells.X[3, 5] = 1
    cells.write_h5ad(tmp_path / "a.h5ad")
    assert cli(*args, "--output", tmp_path / "empty").returncode == 0  # the fixed input: no "it changed" refusal


def test_the_api_evaluate_refuses_embeddings_it_cannot_score(run_dir, atlas):
    import anndata
    import numpy as np

    import tfx

    adata = anndata.read_h5ad(atlas["h5ad"])
    rng = np.random.default_rng(0)
    for values, message in [(np.full((adata.n_obs, 4), np.nan), "adata.obsm['X_tfx'] holds NaN or infinite values"),
                            (np.full((adata.n_obs, 4), np.inf), "adata.obsm['X_tfx'] holds NaN or infinite values"),
                            (np.zeros((adata.n_obs, 0)), "adata.obsm['X_tfx'] has shape")]:
        adata.obsm["X_tfx"] = values
        with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
            tfx.evaluate(adata, cz_benchmarks=False)  # were sklearn's ValueErrors
    adata.obsm["X_tfx"] = rng.normal(size=(adata.n_obs, 4))
    adata.obsm["other"] = adata.obsm["X_tfx"].copy()
    adata.obsm["other"][0, 0] = np.nan
    with pytest.raises(InputError, match=r"adata.obsm\['other'\] holds NaN"):
        tfx.evaluate(adata, compare=["other"], cz_benchmarks=False)
    embeddings_only = anndata.AnnData(obs=adata.obs, obsm={"X_tfx": adata.obsm["X_tfx"]})
    with pytest.raises(InputError, match="counts: adata.X is empty"):
        tfx.evaluate(embeddings_only, counts="X", cz_benchmarks=False)


def test_prompt_counts_have_one_range_and_unlabelled_cells_are_no_cell_type(run_dir, atlas, tmp_path, cli, caplog):
    import anndata
    import pandas as pd

    ckpt = run_dir / "export"
    gene = anndata.read_h5ad(atlas["h5ad"]).var["ensembl_id"].iloc[0]
    ask = ["prompt", "gene-gene", "--checkpoint", ckpt, "--species", "synth_alpha", "--genes", gene]
    for count in ("1e300", "0.5"):  # --prompt refuses them; gene-gene wrote a table for 1e300
        line = one_line_error(cli(*ask, "--count", count, "--output", tmp_path / "gg"))
        assert "argument --count" in line and "is not a number from 1 to 1e+09" in line, line
    line = one_line_error(cli("prompt", "next", "--checkpoint", ckpt, "--species", "synth_alpha", "--prompt", f"{gene}:"))
    assert f"count '' of gene {gene} is not a number" in line, line  # was read as a count of 1
    line = one_line_error(cli("prompt", "next", "--checkpoint", ckpt, "--species", "synth_alpha", "--prompt", ":5"))
    assert "':5' names no gene" in line, line  # was "gene  is not in ..."
    line = one_line_error(cli(*ask[:-1], tmp_path / "nosuch.txt", "--output", tmp_path / "gg"))
    assert "nosuch.txt: no such file" in line, line  # was "gene .../nosuch.txt is not in ..."
    assert not (tmp_path / "gg").exists()
    cells = anndata.read_h5ad(atlas["h5ad"])
    labels = cells.obs["cell_type"].astype(object)
    labels.iloc[:7] = None
    cells.obs["cell_type"] = pd.Categorical(labels)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    done = cli("prompt", "programmes", "--checkpoint", ckpt, "--species", "synth_alpha", "--data",
               tmp_path / "cells.h5ad", "--candidates", gene, "--cells", "2", "--markers", "2", "--output", tmp_path / "p")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--label cell_type: 7 of 120 cells have no label; they are left out" in caplog.text
    types = pd.read_csv(tmp_path / "p" / "markers.csv")["cell_type"].tolist()
    assert "nan" not in types and len(types) == cells.obs["cell_type"].nunique()


def _finetune_args(run_dir, out, *extra):
    return ["train", "finetune/tiny", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32",
            "strategy=auto", "logger=csv", "data.num_workers=0", f"init={run_dir / 'export'}", "trainer.max_steps=2",
            "trainer.val_check_interval=1", "data.token_budget=512", "data.max_cells=8", "data.shuffle_buffer=20",
            f"output_dir={out}", *extra]


def test_cells_without_a_label_are_refused_or_dropped_on_request(run_dir, atlas, tmp_path, cli, caplog):
    import anndata
    import pandas as pd

    cells = anndata.read_h5ad(atlas["h5ad"])
    labels = cells.obs["cell_type"].astype(object)
    labels.iloc[:30] = None  # the first shard's cells (20) and half the second's
    cells.obs["cell_type"] = pd.Categorical(labels)
    cells.obs["size"] = cells.X.sum(1).A1.astype(float)
    cells.obs.loc[cells.obs_names[:7], "size"] = float("nan")
    cells.write_h5ad(tmp_path / "cells.h5ad")
    write_shards([tmp_path / "cells.h5ad"], "synth_alpha", tmp_path / "shards", cells_per_shard=20, processes=1,
                 obs_keys=["size"])
    h5ad = [f"data.files=[{tmp_path / 'cells.h5ad'}]", f"data.val_files=[{tmp_path / 'cells.h5ad'}]"]
    shards = ["data.source=shards", f"data.shards={tmp_path / 'shards'}", f"data.val_shards={tmp_path / 'shards'}"]
    cases = [(h5ad, [], "cell_type", 30), (h5ad, ["task=regression", "task.label_key=size"], "size", 7),
             (shards, [], "cell_type", 30), (shards, ["task=regression", "task.label_key=size"], "size", 7)]
    for i, (data, task, key, n) in enumerate(cases):
        line = one_line_error(cli(*_finetune_args(run_dir, tmp_path / f"refused{i}", *data, *task)))
        assert f"obs '{key}' has no value for {n} cells" in line and "task.missing_labels=drop" in line, (i, line)
        assert not (tmp_path / f"refused{i}").exists()
        caplog.clear()
        done = cli(*_finetune_args(run_dir, tmp_path / f"dropped{i}", *data, *task, "task.missing_labels=drop"))
        assert done.returncode == 0, (i, done.stderr[-3000:])
        warned = [r.getMessage() for r in caplog.records if "task.missing_labels=drop" in r.getMessage()]
        # one warning per data set read (training, held-out), each counting the cells it drops
        assert len(warned) == 2 and all(f" {n} " in w for w in warned), (i, warned)
        assert (tmp_path / f"dropped{i}" / "export" / "task.json").exists()
    line = one_line_error(cli(*_finetune_args(run_dir, tmp_path / "x", *h5ad, "task.missing_labels=skip")))
    assert "task.missing_labels" in line and "refuse, drop" in line, line


def test_prompt_programmes_reads_a_numeric_label_only_as_whole_number_categories(run_dir, atlas, tmp_path, cli):
    import anndata
    import numpy as np
    import pandas as pd

    ckpt = run_dir / "export"
    cells = anndata.read_h5ad(atlas["h5ad"])
    gene = cells.var["ensembl_id"].iloc[0]
    cells.obs["size"] = np.asarray(cells.X.sum(1)).ravel() / 7.0  # a measurement: every cell its own "type"
    cells.obs["cluster"] = (np.arange(cells.n_obs) % 3).astype(float)
    cells.obs.loc[cells.obs_names[:4], "cluster"] = np.nan  # cluster ids as floats, as a NaN makes them
    cells.write_h5ad(tmp_path / "cells.h5ad")
    ask = ["prompt", "programmes", "--checkpoint", ckpt, "--species", "synth_alpha", "--data", tmp_path / "cells.h5ad",
           "--candidates", gene, "--cells", "2", "--markers", "2"]
    line = one_line_error(cli(*ask, "--label", "size", "--output", tmp_path / "p"))
    assert "--label size: holds numbers such as" in line and "categorical or string obs column" in line, line
    assert not (tmp_path / "p").exists()
    done = cli(*ask, "--label", "cluster", "--output", tmp_path / "c")
    assert done.returncode == 0, done.stderr[-2000:]
    assert pd.read_csv(tmp_path / "c" / "markers.csv", dtype=str)["cluster"].tolist() == ["0", "1", "2"]


def test_more_devices_than_the_machine_has_are_refused_before_any_process_starts(atlas, tmp_path, cli):
    cpus, gpus = os.cpu_count(), torch.cuda.device_count()
    line = one_line_error(cli(*train_args(atlas, tmp_path / "run", "trainer.max_steps=1",
                                          f"trainer.devices={cpus + 1}")))  # was that many processes
    assert f"trainer.devices={cpus + 1} but this machine has {cpus} CPUs; set trainer.devices={cpus} or fewer" in line
    line = one_line_error(cli(*train_args(atlas, tmp_path / "run", "trainer.max_steps=1", "trainer.accelerator=gpu",
                                          f"trainer.devices={gpus + 1}", "trainer.num_nodes=2")))
    assert f"trainer.devices={gpus + 1} but this machine has {f'{gpus} CUDA devices' if gpus else 'no CUDA device'}" \
        in line, line
    assert not (tmp_path / "run").exists()


def test_infer_refuses_more_devices_than_the_machine_has(run_dir, atlas, tmp_path, cli):
    """The same check as training's: on CPU each device would be a process, all started at once."""
    gpu = torch.cuda.is_available()
    have = torch.cuda.device_count() if gpu else os.cpu_count()
    line = one_line_error(cli("infer", "--checkpoint", run_dir / "export", "--data", atlas["h5ad"], "--output",
                              tmp_path / "e.h5ad", "--devices", have + 1))
    assert (f"--devices {have + 1} but this machine has {have} {'CUDA devices' if gpu else 'CPUs'}; "
            f"set --devices {have} or fewer") in line, line
    assert list(tmp_path.iterdir()) == []


def test_a_fifo_given_as_an_input_is_refused_at_once(run_dir, atlas, tmp_path, cli):
    """HDF5 cannot read a pipe, and opening a FIFO no one writes waits forever: refused when parsed.
    The first command runs in its own process, so that a regression times out instead of hanging."""
    fifo = tmp_path / "cells.h5ad"
    os.mkfifo(fifo)
    line = one_line_error(tfx("infer", "--checkpoint", run_dir / "export", "--data", fifo, "--output",
                              tmp_path / "o.h5ad", timeout=120))
    assert f"{fifo}: is a FIFO, which this command cannot read" in line, line
    for argv in (["shard", "--input", fifo, "--species", "synth_alpha", "--output", tmp_path / "shards"],
                 ["eval", "--embeddings", fifo, "--output", tmp_path / "report", "--no-cz-benchmarks"]):
        line = one_line_error(cli(*argv))
        assert f"{fifo}: is a FIFO, which this command cannot read" in line, line
    assert not (tmp_path / "o.h5ad").exists() and not (tmp_path / "shards").exists()


def test_gene_embeddings_holding_nan_are_refused_where_they_are_read(tmp_path, cli):
    """A NaN protein embedding would make every cell holding that gene NaN: add-species, training and
    --species-embedding all read gene files through one reader, which refuses it in one line."""
    import numpy as np

    from teacher import build_teacher
    from tfx.vocab.genes import write_gene_embeddings

    ckpt = build_teacher(tmp_path / "ckpt", n_genes=10)
    table = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    table[1, 4] = np.nan
    nan_file = tmp_path / "newsp_gene.h5"
    write_gene_embeddings(nan_file, ["NEW_0", "NEW_1", "NEW_2"], table)
    r = cli("add-species", "--checkpoint", ckpt, "--embeddings", nan_file, "--output", tmp_path / "out")
    assert "NaN or inf (first: NEW_1)" in one_line_error(r) and str(nan_file) in r.stderr
    assert not (tmp_path / "out").exists()
