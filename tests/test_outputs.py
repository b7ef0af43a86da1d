"""The output policy itself, against every kind of existing target (the commands that write are
checked against the same table in test_hostile.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tfx.errors import InputError
from tfx.outputs import DirOutput, FileOutput, check_output

CSV = FileOutput("csv")
REPORT = DirOutput(("summary.md", "report.json", "plots/*.png"), "report")


def _targets(tmp_path):
    """name -> (path, made): every kind of thing an output may already be."""
    t = tmp_path / "targets"
    t.mkdir()
    (t / "ours.csv").write_text("gene,probability\nA,0.5\n")
    (t / "user.txt").write_text("my notes, kept\n")
    os.mkfifo(t / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(t / "sock"))
    os.mknod(t / "dev", 0o600 | 0o020000, os.makedev(1, 7))  # a character device, as /dev/full
    (t / "full").mkdir()
    (t / "full" / "x").write_text("x")
    for name in ("ours.csv", "user.txt", "fifo", "dev", "full"):
        (t / f"link-{name}").symlink_to(t / name)
    return t, sock


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_output_replaces_only_a_file_of_its_kind(tmp_path, overwrite):
    t, sock = _targets(tmp_path)
    before = {p.name: (p.lstat().st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else None)
              for p in t.iterdir()}
    assert check_output(t / "new.csv", CSV) == t / "new.csv"
    with pytest.raises(InputError, match="ends with '/', so it names a directory"):  # not a file named 'new'
        check_output(f"{t / 'new'}/", CSV, overwrite=overwrite)
    refused = {"user.txt", "fifo", "sock", "dev", "full", *(f"link-{n}" for n in ("ours.csv", "user.txt", "fifo", "dev", "full"))}
    if not overwrite:
        refused.add("ours.csv")
    for name in sorted(before):
        if name in refused:
            with pytest.raises(InputError, match=rf"^--output .*{name}: .*"):
                check_output(t / name, CSV, overwrite=overwrite)
        else:
            assert check_output(t / name, CSV, overwrite=overwrite) == t / name
    after = {p.name: (p.lstat().st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else None)
             for p in t.iterdir()}
    assert after == before  # checking changes nothing
    sock.close()


def test_overwrite_replaces_an_h5ad_but_not_another_hdf5_file(tmp_path):
    """A gene embedding file is HDF5 as an h5ad is: --overwrite must not take one for the other."""
    import anndata
    import numpy as np

    from tfx.vocab import write_gene_embeddings

    anndata.AnnData(np.ones((2, 2), np.float32)).write_h5ad(tmp_path / "cells.h5ad")
    write_gene_embeddings(tmp_path / "genes.h5", ["A", "B"], np.ones((2, 4), np.float32))
    (tmp_path / "genes.h5ad").write_bytes((tmp_path / "genes.h5").read_bytes())
    h5ad = FileOutput("h5ad")
    assert check_output(tmp_path / "cells.h5ad", h5ad, overwrite=True) == tmp_path / "cells.h5ad"
    for name in ("genes.h5", "genes.h5ad"):
        with pytest.raises(InputError, match=rf"^--output .*{name}: "):
            check_output(tmp_path / name, h5ad, overwrite=True)


def test_an_output_inside_an_input_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "vocabs").mkdir(parents=True)
    for target in (ckpt / "model_weights.pt", ckpt / "vocabs" / "x_gene.h5", ckpt / "new.h5ad"):
        with pytest.raises(InputError, match="lies in the input"):
            check_output(target, FileOutput("h5ad"), overwrite=True, inputs=[ckpt, tmp_path / "cells.h5ad"])
    with pytest.raises(InputError, match="lies in the input"):
        check_output(tmp_path / "cells.h5ad", FileOutput("h5ad"), overwrite=True, inputs=[tmp_path / "cells.h5ad"])
    assert check_output(tmp_path / "out.h5ad", FileOutput("h5ad"), inputs=[ckpt, None, "s3://b/x"])


def test_a_directory_output_must_be_empty_or_hold_only_what_the_command_writes(tmp_path):
    out = tmp_path / "report"
    assert check_output(out, REPORT) == out  # absent
    out.mkdir()
    assert check_output(out, REPORT) == out  # empty
    (out / "plots").mkdir()
    (out / "plots" / "umap.png").write_bytes(b"\x89PNG\r\n\x1a\n an earlier run's plot")
    (out / "summary.md").write_text("# old")
    with pytest.raises(InputError, match="is not empty; pass --overwrite"):
        check_output(out, REPORT)
    assert check_output(out, REPORT, overwrite=True) == out
    (out / "report.json").write_text("my notes, not the report")  # a name the command writes, a user's content
    with pytest.raises(InputError, match="holds report.json, which the command does not write"):
        check_output(out, REPORT, overwrite=True)
    (out / "report.json").unlink()
    for foreign in (out / "mine.txt", out / "plots" / "deeper" / "x.png", out / "plots" / "mine"):
        foreign.parent.mkdir(parents=True, exist_ok=True)
        if foreign.name == "mine":
            foreign.mkdir()
        else:
            foreign.write_text("user")
        with pytest.raises(InputError, match=r"holds .*which the command does not write"):
            check_output(out, REPORT, overwrite=True)
        (foreign.rmdir() if foreign.is_dir() else foreign.unlink())
        if foreign.parent.name == "deeper":
            foreign.parent.rmdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "plots" / "link.png").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="link.png, which the command does not write"):
        check_output(out, REPORT, overwrite=True)


def test_overwrite_keeps_a_users_file_that_bears_a_name_the_command_writes(tmp_path, capsys):
    from tfx.cli import main

    out = tmp_path / "d"
    out.mkdir()
    (out / "synth_alpha.h5ad").write_text("my own file")
    code = main(["synth", "--output", str(out), "--overwrite", "--species", "1", "--cells", "5", "--genes", "60"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "synth_alpha.h5ad, which the command does not write" in err[0], err
    assert (out / "synth_alpha.h5ad").read_text() == "my own file" and len(list(out.iterdir())) == 1
    (out / "synth_alpha.h5ad").unlink()  # an earlier run's output, of its kind, is replaced
    assert main(["synth", "--output", str(out), "--species", "1", "--cells", "5", "--genes", "60"]) == 0
    assert main(["synth", "--output", str(out), "--overwrite", "--species", "1", "--cells", "5", "--genes", "60"]) == 0


def test_an_unwritable_place_is_refused_before_any_work(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):  # root writes anywhere but on a read-only mount
            with pytest.raises(InputError, match="not a writable directory"):
                check_output(ro / "out.csv", CSV)
            with pytest.raises(InputError, match="not a writable directory"):
                check_output(ro / "new" / "deeper" / "out.csv", CSV)
    finally:
        ro.chmod(0o700)
    (tmp_path / "a-file").write_text("x")
    for where in (tmp_path / "a-file" / "out.csv", "/proc/version/x.csv"):
        with pytest.raises(InputError, match="not a writable directory"):
            check_output(where, CSV)
    if Path("/proc/self").is_dir():  # Linux: /proc shows root every permission bit, yet nothing can be made there
        with pytest.raises(InputError, match="^--output /proc/report: /proc is not a writable directory"):
            check_output("/proc/report", REPORT)


def test_an_output_through_a_symlink_to_nothing_is_one_line(tmp_path):
    """Nothing can be made through a dangling symlink (mkdir raised FileExistsError: a traceback in
    every command, tfx shard --output LINK included)."""
    from conftest import write_h5ad
    from tfx.data.shards import write_shards

    dead = tmp_path / "dead"
    dead.symlink_to(tmp_path / "nowhere" / "x")
    for where in (dead / "out.csv", dead / "sub" / "out.csv"):
        with pytest.raises(InputError, match="dead is a symbolic link to nothing"):
            check_output(where, CSV)
    cells = write_h5ad(tmp_path / "cells.h5ad", [f"SYNTH_ALPHA_{i:05d}" for i in range(3)], [[1, 2, 3]])
    with pytest.raises(InputError, match="--output .*dead is a symbolic link to nothing"):
        write_shards(cells, "synth_alpha", dead, processes=1)
    assert not (tmp_path / "nowhere").exists()


WRITERS = {  # command line with {out}, the kind of output, and a path inside one of its inputs
    "infer": (["infer", "--checkpoint", "{ckpt}", "--data", "{cells}", "--output", "{out}"], "file", "{ckpt}/x.h5ad"),
    "generate": (["generate", "--checkpoint", "{ckpt}", "--species", "synth_alpha", "--n-cells", "1", "--output",
                  "{out}"], "file", "{ckpt}/config.json"),
    "prompt next": (["prompt", "next", "--checkpoint", "{ckpt}", "--species", "synth_alpha", "--output", "{out}"],
                    "file", "{ckpt}/next.csv"),
    "prompt gene-gene": (["prompt", "gene-gene", "--checkpoint", "{ckpt}", "--species", "synth_alpha", "--genes",
                          "SYNTH_ALPHA_00001", "--output", "{out}"], "dir", "{ckpt}/vocabs"),
    "prompt programmes": (["prompt", "programmes", "--checkpoint", "{ckpt}", "--species", "synth_alpha", "--data",
                           "{cells}", "--candidates", "SYNTH_ALPHA_00001", "--output", "{out}"], "dir", "{ckpt}/vocabs"),
    "eval": (["eval", "--embeddings", "{cells}", "--counts", "{cells}", "--checkpoint", "{ckpt}", "--label",
              "cell_type", "--output", "{out}"], "dir", "{ckpt}/report"),
    "synth": (["synth", "--output", "{out}"], "dir", None),
    "quickstart": (["quickstart", "--output", "{out}"], "dir", None),
    "export": (["export", "{ckpt}", "--output", "{out}"], "dir", "{ckpt}/inside"),
    "add-species": (["add-species", "--checkpoint", "{ckpt}", "--embeddings", "{gene_file}", "--output", "{out}"],
                    "dir", "{ckpt}/vocabs"),
    "embed-proteins": (["embed-proteins", "--fasta", "{gene_file}", "--output", "{out}"], "file", "{gene_file}"),
}


def _snapshot(root):
    return {str(p.relative_to(root)): (p.lstat().st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("command", list(WRITERS))
def test_every_writing_command_refuses_what_it_must_not_replace(tmp_path, capsys, command):
    """The same table of existing targets for every command that writes: each one refused in one line
    with exit 2, before any work, even with --overwrite, and nothing changed."""
    from conftest import write_h5ad
    from teacher import build_teacher
    from tfx.cli import main

    ckpt = build_teacher(tmp_path / "ckpt", n_genes=10)
    cells_dir = tmp_path / "data"
    cells_dir.mkdir()
    cells = write_h5ad(cells_dir / "cells.h5ad", [f"SYNTH_ALPHA_{i:05d}" for i in range(10)], [[1] * 10])
    gene_file = tmp_path / ".ckpt_vocab" / "synth_alpha_gene.h5"
    t, sock = _targets(tmp_path)
    (t / "full" / "mine.txt").write_text("a user's file")
    argv, kind, inside = WRITERS[command]
    fill = dict(ckpt=ckpt, cells=cells, cells_dir=cells_dir, gene_file=gene_file)
    targets = ["fifo", "sock", "dev", "link-fifo", "link-dev", "link-user.txt", "full", "link-full"]
    targets += ["user.txt", "ours.csv"] if kind == "file" else ["user.txt", "link-ours.csv"]
    paths = [t / name for name in targets] + ([Path(inside.format(**fill))] if inside else [])
    before = _snapshot(tmp_path)
    for path in paths:
        for overwrite in ([], ["--overwrite"]):
            if overwrite and path.name == "ours.csv" and command == "prompt next":
                continue  # a CSV of its own kind: --overwrite may replace it
            code = main([a.format(out=path, **fill) for a in argv] + overwrite)
            err = capsys.readouterr().err.strip()
            assert code == 2 and len(err.splitlines()) == 1, (command, path, overwrite, err)
            assert str(path).split("/")[-1] in err, (command, path, err)
    assert _snapshot(tmp_path) == before
    sock.close()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 192 KiB file system (tmpfs), as a disk that fills up; needs root, as CI has."""
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_exit_1_and_leaves_nothing_half_written(tiny_disk, tmp_path):
    """As a user runs it, in its own process: HDF5 cannot close a file it could not write, and its exit
    handler would crash the process after tfx's line (exit -11)."""
    import subprocess
    import sys

    from conftest import write_h5ad
    from teacher import build_teacher

    ckpt = build_teacher(tmp_path / "ckpt", n_genes=10)
    cells = write_h5ad(tmp_path / "cells.h5ad", [f"SYNTH_ALPHA_{i:05d}" for i in range(10)], [[1] * 10] * 2000)
    for argv in (["synth", "--output", tiny_disk / "atlas"],
                 ["infer", "--checkpoint", ckpt, "--data", cells, "--output", tiny_disk / "emb.h5ad"]):
        done = subprocess.run([sys.executable, "-m", "tfx.cli", *map(str, argv)], capture_output=True, text=True)
        assert done.returncode == 1, done.stderr[-3000:]
        err = [line for line in done.stderr.strip().splitlines() if not line.startswith(("INFO ", "WARNING "))]
        assert len(err) == 1 and err[0].startswith(f"tfx {argv[0]}: failed: No space left on device"), err[:5]
        assert "run the same command again" in err[0]
        assert not list(tiny_disk.rglob("*"))  # no half-written file, no temporary, no folder it made
    # a disk that fills as HDF5 flushes and closes the file (its last writes): written whole or not at all
    small = write_h5ad(tmp_path / "small.h5ad", [f"SYNTH_ALPHA_{i:05d}" for i in range(10)], [[1] * 10] * 300)
    for filler_kib in (130, 145, 175):
        (tiny_disk / "filler").write_bytes(b"\0" * filler_kib * 1024)
        done = subprocess.run([sys.executable, "-m", "tfx.cli", "infer", "--checkpoint", str(ckpt), "--data", str(small),
                               "--output", str(tiny_disk / "emb.h5ad")], capture_output=True, text=True)
        err = [line for line in done.stderr.strip().splitlines() if not line.startswith(("INFO ", "WARNING "))]
        assert done.returncode == 1 and len(err) == 1 and "No space left on device" in err[0], (filler_kib, err[:5])
        assert sorted(p.name for p in tiny_disk.rglob("*") if p.is_file()) == ["filler"]