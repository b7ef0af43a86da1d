"""`tfx eval`: its options, the report of `tfx infer` outputs, and the report's summary lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from tfx.errors import InputError
from tfx.options import Input, Options, Output, Range, Seed, group, option
from tfx.outputs import DirOutput

MAPS = ("umap", "pca")
REPORT = DirOutput(("report.json", "summary.md", *(f"{m}_*.png" for m in MAPS), "homology.png"), "report")  # what eval writes

Files = list[Annotated[str, Input("file")]]


@dataclass(frozen=True, kw_only=True)
class EvalOptions(Options):
    """How the cells are scored: `tfx eval`'s options and ``tfx.evaluate``'s arguments."""

    label: str = option("cell_type", help="obs column to predict")
    batch: str | None = option(None, help="obs column for mixing metrics, e.g. species")
    seed: Seed = option(42, help="the cz-benchmarks package's random_seed and the probes' folds (its default: 42), "
                                 "%(type)s")
    maps: Literal["umap", "pca", "none"] = option(
        "umap", help="the report's 2-D maps of the cells, one PNG per obs column scored: umap; pca (instant, where "
                     "UMAP compiles for ~20 s in each new process and takes minutes on a million cells); none")
    cz_benchmarks: bool = option(
        True, flags=("--no-cz-benchmarks",),
        help="skip the cz-benchmarks tasks (run when the package is installed); the light probes still run")


@dataclass(frozen=True, kw_only=True)
class EvalCommand(Options):
    """`tfx eval`: the files scored, compared and written. In Python, ``tfx.evaluate`` scores
    ``adata.obsm[rep]``; ``counts`` and ``compare`` name its layers and obsm keys, ``model`` is a
    ``tfx.load``-ed checkpoint."""

    embeddings: Files = option(python=("adata", "rep"),
                               help="h5ad files with obsm['embeddings'] (tfx infer outputs, e.g. one per species)")
    counts: Files | None = option(
        None, help="the h5ad files given to tfx infer, in the same order: adds the PCA-of-log-counts baseline")
    checkpoint: Annotated[str, Input("dir")] | None = option(
        None, python="model", help="the checkpoint the embeddings came from: adds its ESM2-CE baseline (pooled "
                                   "protein embeddings, no transformer) beside them; needs --counts")
    compare: Files | None = option(
        None, help="h5ad files with other embeddings of the same cells (e.g. a model trained without a species, "
                   "or --model-type esm2ce): paired per-fold differences with a bootstrap CI")
    homology: Annotated[str, Input("file")] | None = option(
        None, metavar="HELD_gene.h5", python=None,  # the held-out cells are those of its species' files
        help="the held-out species' gene embedding file: transfer accuracy by the share of each held-out cell's "
             "counts on genes with a close homolog among the checkpoint's genes; needs --checkpoint and --counts")
    homology_threshold: Annotated[float, Range(float, above=0, hi=1)] = option(
        0.8, python=None, help="cosine similarity to the nearest training gene that makes a close homolog, %(type)s")
    output: Annotated[str, Output("dir", "the report", REPORT)] = option(python="output_dir", help="report directory")
    overwrite: bool = option(False, help="replace a report already in --output (nothing else there)")
    options: EvalOptions = group(EvalOptions)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.homology and (not self.checkpoint or not self.counts):
            raise InputError("--homology: needs --checkpoint (the checkpoint the embeddings came from) and --counts "
                             "(the h5ad files given to tfx infer); pass both")
        if self.checkpoint and not self.counts:
            raise InputError("--checkpoint: the ESM2-CE baseline is computed from the cells' counts; "
                             "pass --counts with the h5ad files given to tfx infer")


def eval_files(cmd: EvalCommand) -> dict:
    """The report of ``cmd.embeddings`` (with its baselines, comparisons and homology section), written
    under ``cmd.output``."""
    homology = esm2ce = None
    if cmd.checkpoint:
        from tfx.eval.esm2ce import esm2ce_frames
        from tfx.infer.run import load_for_inference

        ckpt = load_for_inference(cmd.checkpoint)  # read once: the homology genes and ESM2-CE both use it
        if cmd.homology:
            from tfx.eval.homology import load_genes

            homology = load_genes(ckpt, cmd.homology, cmd.homology_threshold)
        esm2ce = esm2ce_frames(ckpt, cmd.counts, cmd.homology)
    o = cmd.options
    from tfx.eval.report import evaluate

    return evaluate(cmd.embeddings, o.label, batch=o.batch, counts_path=cmd.counts, output_dir=cmd.output,
                    seed=o.seed, compare_paths=cmd.compare, esm2ce=esm2ce, homology=homology,
                    maps=o.maps, cz_benchmarks=o.cz_benchmarks)


def summary_lines(report: dict) -> list[str]:
    """The headline figures of a report, one line each, as `tfx eval` prints them."""
    h = report["headline"]
    lines = [f"embeddings: kNN macro-F1 {h['knn_macro_f1']:.3f}, logistic macro-F1 {h['logistic_macro_f1']:.3f}"]
    if "esm2ce_knn_macro_f1" in h:
        lines.append(f"ESM2-CE (pooled protein embeddings): kNN macro-F1 {h['esm2ce_knn_macro_f1']:.3f}, "
                     f"logistic macro-F1 {h['esm2ce_logistic_macro_f1']:.3f}")
    if h["pca_knn_macro_f1"] is not None:
        lines.append(f"PCA of log counts: kNN macro-F1 {h['pca_knn_macro_f1']:.3f}, "
                     f"logistic macro-F1 {h['pca_logistic_macro_f1']:.3f}")
    cz = report["cz_benchmarks"]
    if cz["tasks"]:
        lines.append(f"{cz['package']} {cz['version']}: " + "; ".join(
            f"{name} {reps['embeddings']:.3f}" + "".join(f" ({rep} {v:.3f})" for rep, v in reps.items()
                                                         if rep != "embeddings")
            for name, reps in cz["headline"].items()))
    else:
        lines.append(cz["note"])
    for name, by_clf in report.get("compare", {}).get("differences", {}).items():
        for clf, d in by_clf.items():
            lines.append(f"{name} minus {report['compare']['baseline']}: {clf} macro-F1 {d['mean']:+.3f} "
                         f"(95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})")
    if "homology" in report:
        from tfx.eval.homology import summary_line

        lines.append(summary_line(report["homology"]))
    return lines
