"""One GPU check: every GPU path of tfx in one command, its figures in DIR/gpu_check.{json,md}.

    python tools/gpu_check.py --out DIR [--budget-s 480] [--dry-run] [--work DIR]

Steps, most valuable first (docs/benchmarks.md, "GPU check", says how to read each figure):
  1. environment: device, memory, torch / CUDA versions, whether a compiled flex_attention runs
  2. inference:   `tfx infer` (16-mixed, bf16-mixed, 32) vs the reference package's inference on the
                  same synthetic cells and random weights, TF-Sapiens shape; cells/s and cosines
  3. training:    `tfx train pretrain/sapiens` (bf16), packed then padded, flex then eager attention;
                  tokens/s, useful tokens/s, MFU (Lightning's ThroughputMonitor), peak memory
  4. zero2:       the same recipe under DeepSpeed ZeRO-2 on one device, `tfx export`, `tfx infer`
  5. generation:  `tfx generate` at 512 genes; key/value cache vs recomputing the full forward
Nothing is downloaded: cells come from tfx synth, checkpoints are built at random by the reference
package (tools/reference.py) and by tfx (tools/teacher.py, and the training runs' exports).

Every command runs as a child process with a timeout cut from --budget-s: each step gets a share of
the time left, a step that fails records its error and the next one runs, a step not reached is
"skipped: budget". Both reports are rewritten (temp file + rename) after every measurement, so a
run killed partway leaves valid JSON with the finished steps; SIGTERM / SIGINT write what is done
and exit 128 + the signal. --dry-run: tiny sizes on CPU through the very same code (the test).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPECIES = "synth_alpha"
FULL = dict(cells=2000, subset=200, genes=6000, emb_dim=2560, layers=12, dim=2048, heads=16, seq_len=2047,
            train_steps=60, zero_steps=20, budgets=[32768, 16384, 8192], gen_genes=512, gen_cells=64,
            compare_cells=16)
DRY = dict(cells=24, subset=8, genes=300, emb_dim=32, layers=2, dim=32, heads=4, seq_len=63,
           train_steps=12, zero_steps=12, budgets=[512], gen_genes=12, gen_cells=4, compare_cells=2)
SHARES = {"environment": 0.10, "inference": 0.27, "training": 0.33, "zero2": 0.15, "generation": 0.15}
GRACE_S = 10  # between SIGTERM and SIGKILL for a child past its time
LOG_LINES = 200  # of each command's output kept in DIR/gpu_check.log
MIN_STEP_S = 5  # a step whose share of the time left is shorter is skipped
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0}  # dense, per device (vendor sheets)


class Stop(BaseException):
    """SIGTERM or SIGINT: write what is done, exit 128 + the signal (not an Exception: no step catches it)."""


class Timeout(Exception):
    pass


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def die_with_parent() -> None:
    """In a child, before exec: Linux sends it SIGKILL when this script dies (even by SIGKILL)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: a killed check may leave its current child running


class Check:
    """The run: its settings, the report, the clock, the child processes."""

    def __init__(self, args):
        self.out, self.dry = Path(args.out).resolve(), args.dry_run
        self.size = DRY if self.dry else FULL
        self.out.mkdir(parents=True, exist_ok=True)
        self.keep_work = args.work is not None
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_")).resolve()
        self.logs = self.work / "logs"  # each command's whole output; its end also goes to DIR/gpu_check.log
        self.logs.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.budget_s
        self.step_deadline = self.deadline
        self.cuda = False
        self.peak_tflops: float | None = None  # bf16 dense peak for MFU where Lightning's table lacks the device
        self.prepared: dict | None = None
        self.failures: list[str] = []  # the current step's failed measurements
        self.report = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "dry_run": self.dry,
                       "budget_s": args.budget_s, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                       "host": platform.node(), "sizes": self.size,
                       "steps": {name: {"status": "pending"} for name in SHARES}}

    # -- reports ----------------------------------------------------------------------------------
    def write(self) -> None:
        self.report["updated"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        write_atomic(self.out / "gpu_check.json", json.dumps(self.report, indent=2, default=str) + "\n")
        write_atomic(self.out / "gpu_check.md", markdown(self.report))

    # -- child processes ----------------------------------------------------------------------------
    def run(self, name: str, cmd: list[str]) -> float:
        """Run ``cmd`` until the step's deadline; its wall seconds. Its output's last lines are
        appended to DIR/gpu_check.log (DIR then holds three files, whatever the number of commands)."""
        timeout = self.step_deadline - time.monotonic()
        if timeout <= 1:
            raise Timeout(f"{name}: no time left in the step's share")
        log = self.logs / f"{name}.log"
        started = time.monotonic()
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.work,
                                    preexec_fn=die_with_parent,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise Timeout(f"{name}: stopped after {timeout:.0f} s (the step's share of the budget)") from None
            finally:
                # SIGTERM first: a child cut inside a JIT build (DeepSpeed's ops on CPU) must release
                # the build's lock file, or every later build of that op waits for it forever.
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(timeout=GRACE_S)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                lines = log.read_text(errors="replace").splitlines()
                with open(self.out / "gpu_check.log", "a") as combined:
                    combined.write("\n".join([f"==== {name}: {' '.join(map(str, cmd))}", *lines[-LOG_LINES:], ""]))
        if rc != 0:
            tail = [line for line in lines if line.strip()][-3:]
            raise RuntimeError(f"{name}: exit {rc}: " + " | ".join(tail)[-600:])
        return time.monotonic() - started

    def child(self, name: str, task: str, *args: str) -> dict:
        """This script's own ``--child TASK`` in a fresh process; its JSON result."""
        result = self.work / f"{name}.result.json"
        result.unlink(missing_ok=True)
        seconds = self.run(name, [sys.executable, __file__, "--child", task, str(result), *map(str, args)])
        return {**json.loads(result.read_text()), "seconds": round(seconds, 2)}

    def tfx(self, name: str, *args: str) -> dict:
        """A `tfx` command (the CLI's main, in a child that also reports peak memory)."""
        return self.child(name, "tfx", *args)

    def infer(self, name: str, tool: str, data: str, precision: str) -> tuple[dict, Path]:
        """`tfx infer` or the reference's `transcriptformer inference` on the reference-built checkpoint."""
        ckpt, out, device = self.prepare()["ref_ckpt"], self.work / f"{name}.h5ad", "cuda" if self.cuda else "cpu"
        if tool == "tfx":
            r = self.tfx(name, "infer", "--checkpoint", ckpt, "--data", data, "--output", out, "--device", device,
                         "--precision", precision)
        else:  # its CLI (whose entry point a wheel installed --target lacks), its default batch size (8)
            r = {"seconds": round(self.run(name, [
                sys.executable, "-c", "import sys; from transcriptformer.cli import main; sys.exit(main())",
                "inference", "--checkpoint-path", ckpt, "--data-file", data, "--output-path", str(self.work),
                "--output-filename", out.name, "--precision", precision, "--device", device,
                *([] if self.cuda else ["--disable-compile-block-mask"])]), 2)}  # on CPU, as its docs advise
        return r, out

    def attempt(self, fig: dict, key: str, fn) -> None:
        """Run one measurement; a failure is recorded under ``key`` and in the step's errors, and
        the step goes on (a timeout or a signal ends it)."""
        try:
            fn()
        except RuntimeError as err:
            fig[key] = {"error": str(err)}
            self.failures.append(str(err))
        self.write()

    def prepare(self) -> dict:
        """Synthetic cells and the reference-built checkpoint, made once by whichever step needs them first."""
        if self.prepared is None:
            self.prepared = self.child("prepare", "prepare", self.work / "data", json.dumps(self.size))
        return self.prepared


# -- the steps ------------------------------------------------------------------------------------

def step_environment(c: Check, fig: dict) -> None:
    fig.update(c.child("environment", "environment", "cpu" if c.dry else "cuda"))
    c.cuda = fig["device"] == "cuda"
    if not c.cuda and not c.dry:
        raise RuntimeError("no CUDA device: run with --dry-run on CPU")
    if c.cuda:
        c.peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in fig["device_name"]), None)
        fig["peak_bf16_tflops_for_mfu"] = c.peak_tflops or "Lightning's table"
    c.write()
    try:
        fig["flex_attention"] = c.child("flex_attention", "flex", fig["device"])
    except RuntimeError as err:  # that it does not compile is this step's finding
        fig["flex_attention"] = {"compiles": False, "error": str(err)}


def step_inference(c: Check, fig: dict) -> None:
    p, n, m = c.prepare(), c.size["cells"], c.size["subset"]
    ref16 = "16-mixed" if c.cuda else "32"  # the reference's mixed precision needs CUDA
    fig.update(cells=n, subset_cells=m, reference_precision=ref16)
    runs = [("tfx_16-mixed", "tfx", "cells", "16-mixed"), ("reference", "reference", "cells", ref16),
            ("tfx_bf16-mixed", "tfx", "cells", "bf16-mixed"),
            ("tfx_32_subset", "tfx", "subset", "32"), ("reference_32_subset", "reference", "subset", "32"),
            ("tfx_16-mixed_subset", "tfx", "subset", "16-mixed"), ("reference_subset", "reference", "subset", ref16)]
    outs = {}

    def one(name, tool, data, precision):
        r, outs[name] = c.infer(name, tool, p[data], precision)
        fig[name] = {**r, "cells_per_s": round((n if data == "cells" else m) / r["seconds"], 2)}

    for run in runs:
        c.attempt(fig, run[0], lambda: one(*run))
        for a, b in (("tfx_16-mixed", "reference"), ("tfx_bf16-mixed", "reference"),
                     ("tfx_32_subset", "reference_32_subset")):
            if a in outs and b in outs and f"cosine_{a}_vs_{b}" not in fig:
                fig[f"cosine_{a}_vs_{b}"] = cosines(outs[a], outs[b])
    ok = {k for k, v in fig.items() if isinstance(v, dict) and "seconds" in v}
    if {"tfx_16-mixed", "reference"} <= ok:
        fig["speedup_whole_process"] = round(fig["reference"]["seconds"] / fig["tfx_16-mixed"]["seconds"], 2)
    if {"tfx_16-mixed", "reference", "tfx_16-mixed_subset", "reference_subset"} <= ok:
        # the extra cells of the full run over the subset's time difference: cells/s without start-up
        for key in ("tfx_16-mixed", "reference"):
            extra_s = fig[key]["seconds"] - fig[f"{key}_subset"]["seconds"]
            fig[key]["marginal_cells_per_s"] = (round((n - m) / extra_s, 2) if extra_s > 0
                                                else "n/a: no slower than on the subset")
        if all(isinstance(fig[k]["marginal_cells_per_s"], float) for k in ("tfx_16-mixed", "reference")):
            fig["speedup_marginal"] = round(fig["tfx_16-mixed"]["marginal_cells_per_s"]
                                            / fig["reference"]["marginal_cells_per_s"], 2)


def cosines(a: Path, b: Path) -> dict:
    import anndata
    import numpy as np

    x, y = (anndata.read_h5ad(p).obsm["embeddings"].astype(np.float64) for p in (a, b))
    cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return {"min": round(float(cos.min()), 7), "mean": round(float(cos.mean()), 7)}


def train_args(c: Check, run_dir: Path, steps: int, *extra: str) -> list[str]:
    p, s = c.prepare(), c.size
    args = ["train", "pretrain/sapiens", "data=h5ad", f"data.files=[{p['cells']}]", "vocab=default",
            f"vocab.embeddings=[{p['gene_h5']}]", "logger=csv", f"output_dir={run_dir}", "trainer.devices=1",
            "trainer.num_nodes=1", "trainer.accumulate_grad_batches=1", f"trainer.max_steps={steps}",
            "trainer.log_every_n_steps=2", "trainer.checkpoint_every_n_steps=100000", "optim.warmup_steps=5",
            f"data.num_workers={0 if c.dry else 2}"]
    if c.peak_tflops:
        args.append(f"trainer.peak_tflops={c.peak_tflops}")
    if c.dry:  # a nominal peak of 1 TFLOP/s, so that the MFU column is read as on a GPU
        args += ["trainer.accelerator=cpu", "trainer.peak_tflops=1.0", f"model.num_layers={s['layers']}",
                 f"model.num_heads={s['heads']}", f"model.seq_len={s['seq_len']}",
                 *(f"model.{k}={s['dim']}" for k in ("embed_dim", "model_dim", "gene_head_hidden_dim"))]
    return args + list(extra)


def throughput(run_dir: Path) -> dict:
    """The ThroughputMonitor's last window (after warm-up and compiles) from the run's metrics.csv."""
    import pandas as pd

    m = pd.concat([pd.read_csv(f) for f in sorted((run_dir / "logs").glob("*/metrics.csv"))])
    last = m.dropna(subset=["train/device/items_per_sec"]).iloc[-1]
    tokens, cells = float(last["train/device/items_per_sec"]), float(last["train/device/samples_per_sec"])
    mfu = last.get("train/device/mfu")
    mfu = float(f"{mfu:.4g}") if mfu is not None and mfu == mfu else "n/a: the device's peak FLOP/s is unknown"
    return {"tokens_per_s": round(tokens), "useful_tokens_per_s": round(tokens - cells),  # one aux token a cell
            "cells_per_s": round(cells, 2), "step": int(last["step"]), "mfu": mfu}


def step_training(c: Check, fig: dict) -> None:
    budget = c.size["budgets"][0]
    fig["token_budget"] = budget

    def one(attention, mode):
        run_dir = c.work / "train" / f"{mode}_{attention}"
        try:
            r = c.tfx(f"train_{mode}_{attention}", *train_args(
                c, run_dir, c.size["train_steps"], f"data.token_budget={budget}", "strategy=auto",
                f"data.pack={mode == 'packed'}", f"model.attention={attention}"))
            fig[attention][mode] = {**throughput(run_dir), "peak_gib": r["peak_gib"], "seconds": r["seconds"]}
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)  # its checkpoints are large

    for attention in ("flex", "eager"):
        if attention == "flex" and not c.cuda:
            fig["flex"] = "n/a on CPU: FlexAttention has no CPU backward (the eager runs take the same path)"
            continue
        runs = fig[attention] = {}
        for mode in ("packed", "padded"):  # packed first: the MFU goal is held to it
            c.attempt(runs, mode, lambda: one(attention, mode))
        if all("useful_tokens_per_s" in runs[mode] for mode in ("padded", "packed")):
            runs["packed_over_padded"] = round(runs["packed"]["useful_tokens_per_s"]
                                               / runs["padded"]["useful_tokens_per_s"], 3)


def step_zero2(c: Check, fig: dict) -> None:
    for budget in c.size["budgets"]:  # the recipe's token budget, halved until a step fits
        run_dir = c.work / "zero2" / str(budget)
        try:
            r = c.tfx(f"zero2_train_{budget}", *train_args(c, run_dir, c.size["zero_steps"], "strategy=deepspeed_zero2",
                                                            "data.pack=true", f"data.token_budget={budget}"))
            break
        except RuntimeError as err:
            shutil.rmtree(run_dir, ignore_errors=True)
            oom = "out of memory" in (c.logs / f"zero2_train_{budget}.log").read_text(errors="replace").lower()
            if not oom or budget == c.size["budgets"][-1]:
                raise
            fig[f"token_budget_{budget}"] = f"out of memory: {err}"[:300]
            c.write()
    fig.update(token_budget=budget, train={**throughput(run_dir), "peak_gib": r["peak_gib"], "seconds": r["seconds"]})
    c.write()
    export = c.work / "zero2" / "consolidated"
    fig["export_seconds"] = c.tfx("zero2_export", "export", run_dir, "--output", export)["seconds"]
    fig["export_mib"] = round(sum(f.stat().st_size for f in export.rglob("*") if f.is_file()) / 2**20, 1)
    shutil.rmtree(run_dir, ignore_errors=True)
    c.write()
    out = c.work / "zero2_infer.h5ad"
    fig["infer_seconds"] = c.tfx("zero2_infer", "infer", "--checkpoint", export, "--data", c.prepare()["subset"],
                                 "--output", out, "--device", "cuda" if c.cuda else "cpu")["seconds"]
    import anndata
    import numpy as np

    emb = anndata.read_h5ad(out).obsm["embeddings"]
    fig["infer_cells"], fig["infer_finite"] = int(emb.shape[0]), bool(np.isfinite(emb).all())
    if not fig["infer_finite"]:
        raise RuntimeError("the export's embeddings are not all finite")


def step_generation(c: Check, fig: dict) -> None:
    s = c.size
    ckpt = c.child("generation_teacher", "teacher", c.work / "teacher", json.dumps(s))["path"]
    fig.update(genes=s["gen_genes"], cells=s["gen_cells"])
    device = "cuda" if c.cuda else "cpu"

    def cli():
        r = c.tfx("generate", "generate", "--checkpoint", ckpt, "--species", SPECIES, "--n-cells", s["gen_cells"],
                  "--max-genes", s["gen_genes"], "--order", "free", "--batch-size", s["gen_cells"], "--device", device,
                  "--output", c.work / "generated.h5ad")
        fig["tfx_generate"] = {**r, "cells_per_s_whole_process": round(s["gen_cells"] / r["seconds"], 3)}

    def compare():
        fig["cache_vs_recompute"] = c.child("generation_compare", "compare", ckpt, json.dumps(s), device)

    c.attempt(fig, "tfx_generate", cli)
    c.attempt(fig, "cache_vs_recompute", compare)


STEPS = {"environment": step_environment, "inference": step_inference, "training": step_training,
         "zero2": step_zero2, "generation": step_generation}


# -- child tasks (each in its own process) ----------------------------------------------------------

def child_environment(device: str) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    cuda = device == "cuda" and torch.cuda.is_available()
    fig = {"device": "cuda" if cuda else "cpu", "torch": torch.__version__,
           "cuda": torch.version.cuda or "n/a: CPU build", "python": platform.python_version(),
           "cpu_count": os.cpu_count()}
    for pkg in ("lightning", "deepspeed", "transcriptformer"):
        try:
            fig[pkg] = version(pkg)
        except PackageNotFoundError:
            fig[pkg] = "not installed"
    if cuda:
        props = torch.cuda.get_device_properties(0)
        fig.update(device_name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                   device_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}")
    else:
        fig.update(device_name=f"CPU ({platform.machine()})", memory_gib="n/a on CPU")
    return fig


def child_flex(device: str) -> dict:
    """A compiled flex_attention with tfx's kind of score_mod (count bias, soft-cap) and a causal block
    mask; forward and backward on CUDA, forward on CPU (FlexAttention has no CPU backward)."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    cuda = device == "cuda"
    q, k, v = (torch.randn(2, 4, 256, 64, device=device, requires_grad=cuda) for _ in range(3))
    bias = torch.rand(2, 256, device=device)

    def score_mod(score, b, h, q_idx, kv_idx):
        return 10.0 * torch.tanh((score + bias[b, kv_idx] * (q_idx > kv_idx)) / 10.0)

    mask = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, 2, None, 256, 256, device=device)
    out = torch.compile(flex_attention)(q, k, v, score_mod=score_mod, block_mask=mask)
    if cuda:
        out.sum().backward()  # the backward kernel is the one training needs
    return {"compiles": bool(torch.isfinite(out).all()), "ran": "forward and backward" if cuda else "forward"}


def child_prepare(out: str, sizes: str) -> dict:
    import anndata

    sys.path.insert(0, str(ROOT / "tools"))
    import reference
    from tfx.synth import synth_atlas

    s, out = json.loads(sizes), Path(out)
    atlas = synth_atlas(out / "atlas", species=1, cells=s["cells"], genes=s["genes"], embedding_dim=s["emb_dim"])
    files = atlas["species"][SPECIES]
    cells = anndata.read_h5ad(files["h5ad"])
    cells[: s["subset"]].copy().write_h5ad(out / "subset.h5ad")
    ckpt = reference.build_reference_checkpoint(
        out / "ref_ckpt", {SPECIES: list(cells.var["ensembl_id"])}, emb_dim=s["emb_dim"], embed_dim=s["dim"],
        num_heads=s["heads"], num_layers=s["layers"], model_dim=s["dim"], seq_len=s["seq_len"])
    return {"cells": files["h5ad"], "gene_h5": files["gene_h5"], "subset": str(out / "subset.h5ad"),
            "ref_ckpt": str(ckpt), "genes_per_cell": files["genes_per_cell"]}


def child_tfx(*argv: str) -> dict:
    import resource

    import torch

    from tfx.cli import main

    rc = main(list(argv))
    if rc:
        raise SystemExit(rc)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return {"peak_gib": f"n/a on CPU (peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB)"}


def child_teacher(out: str, sizes: str) -> dict:
    sys.path.insert(0, str(ROOT / "tools"))
    from teacher import build_teacher

    s = json.loads(sizes)
    path = build_teacher(Path(out), species=SPECIES, n_genes=s["gen_genes"] + 100, emb_dim=s["emb_dim"], end_bias=-30.0,
                         seq_len=s["gen_genes"] + 1, embed_dim=s["dim"], num_layers=s["layers"], num_heads=s["heads"],
                         model_dim=s["dim"], gene_head_hidden_dim=s["dim"])
    return {"path": str(path)}


def child_compare(ckpt_dir: str, sizes: str, device: str) -> dict:
    """tfx's cached sampler vs the same sampler recomputing the full forward at every position
    (tools/bench/generate.py's baseline, on any device), one seed, same cells."""
    import numpy as np
    import torch

    from tfx.checkpoint import load_checkpoint
    from tfx.generate.sample import allowed_next, restrict, sample_cells, sample_ztp, species_of
    from tfx.tokenize import TokenBatch

    s = json.loads(sizes)
    n, limit = s["compare_cells"], s["gen_genes"]
    ckpt = load_checkpoint(ckpt_dir)
    model = ckpt.model.to(device).eval()
    species = species_of(ckpt, SPECIES)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def full_recompute(generator):
        pad, end = model.special.pad, model.special.end
        in_species = species.mask(model.vocab_size, device)
        ids, counts = torch.full((n, limit + 1), pad, device=device), torch.zeros(n, limit + 1, device=device)
        drawn = torch.zeros(n, model.vocab_size, dtype=torch.bool, device=device)
        last = torch.full((n,), -1, device=device)
        for t in range(limit):
            hidden = model(TokenBatch(ids[:, : t + 1], counts[:, : t + 1]), heads=False).hidden[:, t]
            allowed = allowed_next(in_species, drawn, last, t, "free", limit, end)
            gene = torch.multinomial(restrict(model.next_gene_logits(hidden), allowed, 1.0, None).exp(), 1,
                                     generator=generator).squeeze(1)
            count = sample_ztp(model.count_rate(hidden, gene).float() + model.cfg.log_counts_eps, generator)
            ids[:, t], counts[:, t] = gene, count.clamp(max=ckpt.data_cfg.clip_counts)
            drawn[torch.arange(n, device=device), gene] = True
            last = gene
        return [row[:limit].cpu().numpy() for row in ids]

    sample_cells(ckpt, species, 1, order="free", max_genes=4, device=device)  # warm-up
    sync()
    started = time.perf_counter()
    cached = sample_cells(ckpt, species, n, order="free", max_genes=limit, device=device,
                          generator=torch.Generator(device).manual_seed(1))
    sync()
    t_cached = time.perf_counter() - started
    started = time.perf_counter()
    full = full_recompute(torch.Generator(device).manual_seed(1))
    sync()
    t_full = time.perf_counter() - started
    agree = float(np.mean([np.mean(a[: len(b)] == b[: len(a)]) for a, b in zip(cached.genes, full)]))
    return {"cells": n, "genes": limit, "cached_cells_per_s": round(n / t_cached, 3),
            "full_recompute_cells_per_s": round(n / t_full, 3), "speedup": round(t_full / t_cached, 2),
            "genes_drawn_identically": round(agree, 4)}


CHILDREN = {"environment": child_environment, "flex": child_flex, "prepare": child_prepare, "tfx": child_tfx,
            "teacher": child_teacher, "compare": child_compare}


# -- the report ---------------------------------------------------------------------------------------

def markdown(report: dict) -> str:
    env = report["steps"]["environment"].get("figures", {})
    lines = [f"# GPU check{' (dry run on CPU: tiny sizes, figures not meaningful)' if report['dry_run'] else ''}", "",
             f"`{report['command']}` on {report['host']}, started {report['started']}, updated {report['updated']}; "
             f"device: {env.get('device_name', 'unknown')}; budget {report['budget_s']} s.", ""]
    for name, step in report["steps"].items():
        seconds = f", {step['seconds']} s" if "seconds" in step else ""
        lines += [f"## {name}: {step['status']}{seconds}", ""]
        if step.get("error"):
            lines += [f"error: `{step['error']}`", ""]
        flat = _flat(step.get("figures", {}))
        if flat:
            lines += ["| figure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in flat.items()], ""]
    return "\n".join(lines)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":  # --child TASK RESULT_JSON ARGS...
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # unwinds: finally blocks run
        task, result = sys.argv[2], Path(sys.argv[3])
        write_atomic(result, json.dumps(CHILDREN[task](*sys.argv[4:])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="directory for gpu_check.json, gpu_check.md and gpu_check.log")
    ap.add_argument("--budget-s", type=float, default=480, help="wall-clock seconds for the whole check")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU: checks that every step runs")
    ap.add_argument("--work", default=None, help="scratch directory (data, checkpoints, whole logs), kept; "
                                                 "default: a temporary one, removed")
    c = Check(ap.parse_args())

    def stop(signum, frame):
        raise Stop(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    code = 0
    c.write()
    try:
        for i, (name, fn) in enumerate(STEPS.items()):
            step = c.report["steps"][name]
            share = (c.deadline - time.monotonic()) * SHARES[name] / sum(list(SHARES.values())[i:])
            if share < MIN_STEP_S:
                step["status"] = "skipped: budget"
                continue
            c.step_deadline = time.monotonic() + share
            step.update(status="running", figures={})
            c.write()
            started, c.failures = time.monotonic(), []
            try:
                fn(c, step["figures"])
                if c.failures:
                    raise RuntimeError(f"{len(c.failures)} measurement(s) failed: " + "; ".join(c.failures))
                step["status"] = "ok"
            except Timeout as err:
                step.update(status="timeout", error=str(err))
            except Exception as err:  # noqa: BLE001  (a failing step is recorded; the next one runs)
                step.update(status="error", error=f"{type(err).__name__}: {err}"[:1000])
                code = 1
            finally:
                step["seconds"] = round(time.monotonic() - started, 1)
                c.write()
    except Stop as sig:  # whichever step was running is marked, the rest were not run
        code = 128 + sig.args[0]
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_IGN)  # a second signal does not cut the last write
        for step in c.report["steps"].values():
            if step["status"] in ("running", "pending"):
                step["status"] = f"interrupted: {signal.Signals(sig.args[0]).name}" if step["status"] == "running" \
                    else "not run: interrupted"
    finally:
        c.write()
        if not c.keep_work:
            shutil.rmtree(c.work, ignore_errors=True)
    print(f"wrote {c.out / 'gpu_check.json'} and {c.out / 'gpu_check.md'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
