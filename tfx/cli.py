"""The `tfx` command: parses arguments and delegates."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import warnings


class Range:
    """An argparse type: a finite int or float within bounds, refused at parse time (exit 2);
    ``%(type)s`` in an option's help shows the range."""

    def __init__(self, kind: type, lo: float | None = None, hi: float | None = None, above: float | None = None,
                 also: tuple = ()):
        self.kind, self.lo, self.hi, self.above, self.also = kind, lo, hi, above, also

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text} is not {self}") from None
        if value in self.also:
            return value
        if (not math.isfinite(value) or (self.lo is not None and value < self.lo)
                or (self.hi is not None and value > self.hi) or (self.above is not None and value <= self.above)):
            raise argparse.ArgumentTypeError(f"{text} is not {self}")
        return value

    def __str__(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        if self.lo is not None and self.hi is not None:
            bounds = f" from {self.lo:g} to {self.hi:g}"
        elif self.above is not None and self.hi is not None:
            bounds = f" > {self.above:g} and <= {self.hi:g}"
        elif self.lo is not None:
            bounds = f" >= {self.lo:g}"
        elif self.above is not None:
            bounds = f" > {self.above:g}"
        else:
            bounds = ""
        return noun + bounds + "".join(f" or {a:g}" for a in self.also)


POSITIVE, COUNT = Range(int, lo=1), Range(int, lo=0)
REFERENCE_FLAGS = {  # `transcriptformer inference` flags -> tfx's
    "--checkpoint-path": "--checkpoint", "--data-file": "--data", "--output-path": "--output (a directory there)",
    "--output-filename": "--output (its file name)", "--gene-col-name": "--gene-col",
    "--pretrained-embedding": "--species-embedding", "--num-gpus": "--devices",
}


def _note_reference_flags(argv: list[str]) -> None:
    for flag, ours in REFERENCE_FLAGS.items():
        if any(a == flag or a.startswith(flag + "=") for a in argv):
            print(f"tfx: note: {flag} is the reference's name for {ours}", file=sys.stderr)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default where it has one."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], ""):
            return action.help
        return super()._get_help_string(action)


def _use_raw(value: str) -> bool | None:
    v = value.lower()
    if v not in ("auto", "true", "false"):
        raise argparse.ArgumentTypeError("expected auto, true or false")
    return None if v == "auto" else v == "true"


INFER_OUTPUTS = ("embeddings", "llh", "gene_llh", "nll", "predictions")


def cmd_registry(args) -> int:
    from tfx.components import load_all
    from tfx.registry import describe

    load_all()
    current = None
    for kind, name, origin in describe():
        if kind != current:
            print(f"{kind}:")
            current = kind
        print(f"  {name:<28} {origin}")
    return 0


def cmd_infer(args) -> int:
    from tfx.errors import InputError
    from tfx.infer.run import InferOptions, infer_file, load_for_inference

    if args.output is None and args.output_path is None:
        raise InputError("--output: name the output h5ad (or the reference's --output-path DIR)")
    output = args.output or os.path.join(args.output_path, args.output_filename)
    outputs = {o.strip() for o in args.outputs.split(",") if o.strip()}
    unknown = outputs - set(INFER_OUTPUTS)
    if unknown or not outputs:
        raise InputError(f"--outputs: unknown {sorted(unknown)}; choose from {', '.join(INFER_OUTPUTS)}")
    ckpt = load_for_inference(args.checkpoint, attention=args.attention, clip_counts=args.clip_counts,
                              species_embeddings=args.species_embedding)
    opts = InferOptions(
        emb_type=args.emb_type, embeddings="embeddings" in outputs, llh="llh" in outputs,
        gene_llh="gene_llh" in outputs, nll="nll" in outputs, predictions="predictions" in outputs,
        gene_col=args.gene_col or ckpt.data_cfg.gene_col_name,
        use_raw=args.use_raw, remove_duplicate_genes=args.remove_duplicate_genes, device=args.device,
        precision=args.precision, token_budget=args.token_budget, max_cells=args.batch_size,
        chunk_size=args.chunk_size, devices=args.devices, model_type=args.model_type, layer=args.embedding_layer_index,
    )
    summary = infer_file(ckpt, args.data, output, opts)
    rate = summary["cells"] / max(summary["seconds"], 1e-9)
    print(f"wrote {summary['output']}: {summary['cells']} cells in {summary['seconds']:.1f} s ({rate:.0f} cells/s)")
    return 0


def cmd_generate(args) -> int:
    from tfx.checkpoint import load_checkpoint
    from tfx.generate.run import generate_file
    from tfx.infer.run import resolve_devices

    ckpt = load_checkpoint(args.checkpoint, attention=args.attention)
    summary = generate_file(ckpt, args.species, args.n_cells, args.output, prompt=args.prompt, assay=args.assay,
                            order=args.order, temperature=args.temperature, top_k=args.top_k,
                            max_genes=args.max_genes, seed=args.seed, batch_size=args.batch_size,
                            device=resolve_devices(args.device)[0])
    print(f"wrote {summary['output']}: {summary['cells']} cells, {summary['mean_genes']:.1f} genes on average, "
          f"{summary['ended']} ended by [END]; counts {summary['counts'].split(':')[0]}")
    return 0


def cmd_prompt(args) -> int:
    from pathlib import Path

    from tfx.atomic import atomic_path
    from tfx.checkpoint import load_checkpoint
    from tfx.errors import InputError
    from tfx.generate import prompt as queries
    from tfx.generate.sample import parse_prompt, require_gene_head, species_of

    if args.output:  # checked before any work: next writes a CSV file, the others a directory
        out = Path(args.output)
        if args.query == "next" and out.is_dir():
            raise InputError(f"--output {out}: is a directory; name the .csv file to write")
        if args.query != "next" and out.exists() and not out.is_dir():
            raise InputError(f"--output {out}: is a file; name a directory for the outputs")
    ckpt = load_checkpoint(args.checkpoint)
    require_gene_head(ckpt)
    species = species_of(ckpt, args.species)
    if args.query == "next":
        table = queries.next_gene(ckpt, species, parse_prompt(ckpt, species, args.prompt), assay=args.assay,
                                  top_k=args.top_k)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if args.output:
            with atomic_path(args.output) as tmp:
                table.to_csv(tmp, index=False)
    elif args.query == "gene-gene":
        genes = queries.gene_list(ckpt, species, args.genes, "--genes")
        names = [ckpt.vocab.tokens[g] for g in genes]
        matrix = queries.gene_gene(ckpt, genes, count=args.count, assay=args.assay)
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        import pandas as pd

        with atomic_path(out / "gene_gene.csv") as tmp:
            pd.DataFrame(matrix, index=names, columns=names).to_csv(tmp, index_label="prompt")
        queries.heatmap_png(out / "gene_gene.png", matrix, names, names,
                            "log p(column next | row) - log p(column next | nothing)")
        print(f"wrote {out / 'gene_gene.csv'} and {out / 'gene_gene.png'} ({len(genes)} genes)")
    else:
        candidates = queries.gene_list(ckpt, species, args.candidates, "--candidates")
        table = queries.run_programmes(ckpt, species, args.data, args.label, candidates, args.output,
                                       n_markers=args.markers, gene_col=args.gene_col, assay=args.assay,
                                       order=args.order, cells=args.cells, seed=args.seed)
        for cell_type, row in table.iterrows():
            print(f"{cell_type}: {', '.join(row.sort_values(ascending=False).index[:5])}")
        print(f"wrote {args.output}/programmes.csv, markers.csv, programmes.png")
    return 0


def cmd_shard(args) -> int:
    from tfx.components import load_all
    from tfx.data.shards import write_shards

    load_all()  # species may come from tfx.synth or a plugin
    summary = write_shards(args.input, args.species, args.output, cells_per_shard=args.cells_per_shard,
                           obs_keys=args.obs_keys, processes=args.processes, gene_col=args.gene_col,
                           use_raw=args.use_raw, remove_duplicate_genes=args.remove_duplicate_genes)
    print(f"wrote {summary['manifest']}: {summary['cells']} cells in {summary['shards']} shards "
          f"({summary['written']} written by this run) in {summary['seconds']:.1f} s")
    return 0


def cmd_embed_proteins(args) -> int:
    from tfx.esm import embed_proteins
    from tfx.progress import progress

    try:
        with progress(unit="seq", desc="embed-proteins") as bar:
            def show(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            summary = embed_proteins(
                args.fasta, args.output, args.model, gene_map=args.gene_map, layer=args.layer,
                isoforms=args.isoforms, max_residues=args.max_residues, token_budget=args.token_budget,
                device=args.device, progress=show,
            )
    except KeyboardInterrupt:
        print(f"tfx embed-proteins: interrupted; finished genes are kept in {args.output}.partial, "
              "run the same command again to resume", file=sys.stderr)
        return 130
    print(f"wrote {summary['output']}: {summary['genes']} genes x {summary['dim']} "
          f"({summary['computed']} computed, {summary['resumed']} resumed) in {summary['seconds']:.1f} s")
    return 0


def cmd_add_species(args) -> int:
    from tfx.checkpoint import check_output_dir, load_checkpoint, save_checkpoint
    from tfx.checkpoint.surgery import add_species

    check_output_dir(args.output, args.overwrite)
    ckpt = add_species(load_checkpoint(args.checkpoint), args.embeddings)
    save_checkpoint(ckpt, args.output)
    print(f"wrote {args.output}: vocabulary of {len(ckpt.vocab)} tokens ({', '.join(f for f, _ in ckpt.vocab.files)})")
    return 0


def cmd_download(args) -> int:
    from tfx.artifacts import download_artifacts

    try:
        records = download_artifacts(args.name, args.checkpoint_dir, base_url=args.base_url, retries=args.retries)
    except KeyboardInterrupt:
        print("tfx download: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    for r in records:
        if r["status"] == "present":
            print(f"{r['path']}: already present, nothing to do")
        else:
            check = "sha256 verified" if r["sha256"] else "size verified; no checksum published"
            print(f"{r['path']}: downloaded {r['bytes'] / 2**20:.1f} MiB from {r['url']} ({check}), unpacked")
    return 0


def cmd_download_data(args) -> int:
    from tfx.artifacts import CensusPortal, download_data

    try:
        summary = download_data(
            CensusPortal(args.census_version), args.species, args.output_dir, processes=args.processes,
            max_retries=args.max_retries, save_metadata=not args.no_metadata, shard=args.shard,
            cells_per_shard=args.cells_per_shard,
        )
    except KeyboardInterrupt:
        print("tfx download-data: interrupted; complete datasets are kept, run the same command again "
              "to fetch the rest", file=sys.stderr)
        return 130
    sharded = f", {summary['sharded']} sharded" if args.shard else ""
    print(f"{summary['output']}: {summary['selected']} of {summary['listed']} listed datasets selected; "
          f"{summary['downloaded']} downloaded, {summary['present']} already present{sharded}")
    return 0


def cmd_synth(args) -> int:
    from tfx.errors import InputError
    from tfx.synth import synth_atlas

    try:
        summary = synth_atlas(args.output, species=args.species, cells=args.cells, genes=args.genes, seed=args.seed)
    except ValueError as err:
        raise InputError(str(err)) from None
    for s in summary["species"].values():
        g = s["genes_per_cell"]
        print(f"wrote {s['h5ad']} ({s['cells']} cells x {s['genes']} genes; {g['min']} to {g['max']} "
              f"expressed genes per cell, median {g['median']:.0f}) and {s['gene_h5']}")
    return 0


def cmd_eval(args) -> int:
    from tfx.errors import InputError
    from tfx.eval import evaluate
    from tfx.eval.report import check_report_dir

    check_report_dir(args.output)
    if args.homology and (not args.checkpoint or not args.counts):
        raise InputError("--homology: needs --checkpoint (the checkpoint the embeddings came from) and --counts "
                         "(the h5ad files given to tfx infer); pass both")
    if args.checkpoint and not args.counts:
        raise InputError("--checkpoint: the ESM2-CE baseline is computed from the cells' counts; "
                         "pass --counts with the h5ad files given to tfx infer")
    homology = esm2ce = None
    if args.checkpoint:
        from tfx.infer.run import load_for_inference

        ckpt = load_for_inference(args.checkpoint)  # read once: the homology genes and ESM2-CE both use it
        if args.homology:
            from tfx.eval.homology import load_genes

            homology = load_genes(ckpt, args.homology, args.homology_threshold)
        esm2ce = _esm2ce_frames(ckpt, args.counts, args.homology)
    report = evaluate(args.embeddings, args.label, batch=args.batch, counts_path=args.counts,
                      output_dir=args.output, seed=args.seed, compare_paths=args.compare, esm2ce=esm2ce,
                      homology=homology, cz_benchmarks=not args.no_cz_benchmarks)
    h = report["headline"]
    print(f"embeddings: kNN macro-F1 {h['knn_macro_f1']:.3f}, logistic macro-F1 {h['logistic_macro_f1']:.3f}")
    if "esm2ce_knn_macro_f1" in h:
        print(f"ESM2-CE (pooled protein embeddings): kNN macro-F1 {h['esm2ce_knn_macro_f1']:.3f}, "
              f"logistic macro-F1 {h['esm2ce_logistic_macro_f1']:.3f}")
    if h["pca_knn_macro_f1"] is not None:
        print(f"PCA of log counts: kNN macro-F1 {h['pca_knn_macro_f1']:.3f}, "
              f"logistic macro-F1 {h['pca_logistic_macro_f1']:.3f}")
    cz = report["cz_benchmarks"]
    if cz["tasks"]:
        print(f"{cz['package']} {cz['version']}: " + "; ".join(
            f"{name} {reps['embeddings']:.3f}" + "".join(f" ({rep} {v:.3f})" for rep, v in reps.items() if rep != "embeddings")
            for name, reps in cz["headline"].items()))
    else:
        print(cz["note"])
    for name, by_clf in report.get("compare", {}).get("differences", {}).items():
        for clf, d in by_clf.items():
            print(f"{name} minus {report['compare']['baseline']}: {clf} macro-F1 {d['mean']:+.3f} "
                  f"(95% CI {d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f})")
    if "homology" in report:
        from tfx.eval.homology import summary_line
        print(summary_line(report["homology"]))
    print(f"wrote {args.output}/report.json, summary.md, {', '.join(report['plots'])}")
    return 0


def _esm2ce_frames(ckpt, counts: list[str], held_out_genes: str | None = None) -> list:
    """`tfx infer --model-type esm2ce` of each counts file, in memory: cells x protein width, indexed by cell name.
    ``held_out_genes``: a species' gene file the checkpoint lacks, added so its cells have protein embeddings."""
    from pathlib import Path

    import pandas as pd

    from tfx.data.anndata import open_backed
    from tfx.infer.run import InferOptions, infer_memory

    if held_out_genes and not any(name == os.path.basename(held_out_genes) for name, _ in ckpt.vocab.files):
        from tfx.checkpoint.surgery import add_species
        ckpt = add_species(ckpt, [held_out_genes])
    opts = InferOptions(model_type="esm2ce", gene_col=ckpt.data_cfg.gene_col_name)
    frames = []
    for path in counts:
        adata = open_backed(Path(path))
        try:
            arrays, _ = infer_memory(ckpt, adata, opts)
            frames.append(pd.DataFrame(arrays["embeddings"], index=adata.obs_names))
        finally:
            adata.file.close()
    return frames


def cmd_quickstart(args) -> int:
    from tfx.quickstart import quickstart

    report = quickstart(args.output, species=args.species, cells=args.cells, steps=args.steps, seed=args.seed)
    head = report["headline"]
    print("headline (5-fold CV on cell_type, macro-F1):")
    for key, value in head.items():
        print(f"  {key:<40} {value if not isinstance(value, float) else f'{value:.3f}'}")
    m = report["prompting"]["mean"]
    print(f"prompting AUROC on the atlas's true marker programmes: {m['auroc']:.3f} (lift {m['lift_auroc']:.3f}; "
          f"gene frequency alone {m['frequency_auroc']:.3f})")
    print(f"what this shows, and what it does not: {args.output}/report/summary.md")
    return 0


def cmd_train(args) -> int:
    if args.list:
        from tfx.recipe import available

        for name, (_, description) in available(args.recipes).items():
            print(f"  {name:<24} {description}")
        return 0
    if not args.recipe:
        print("tfx train: error: name a recipe (tfx train --list shows them) or a recipe YAML file", file=sys.stderr)
        return 2
    from tfx.recipe import compose, recipe_path

    cfg = compose(args.recipe, args.overrides, args.recipes)
    recipe_file = str(recipe_path(args.recipe, args.recipes))
    if args.check:
        from tfx.train.run import check

        print(check(cfg, recipe_file))
        return 0
    from tfx.train.run import train

    print(f"exported {train(cfg, recipe_file)}")
    return 0


def cmd_export(args) -> int:
    from tfx.train.export import export_run

    print(f"exported {export_run(args.run_dir, args.output, overwrite=args.overwrite, lora_form=args.lora_form)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tfx.quickstart import STEPS as quickstart_steps  # light: its heavy imports are inside the function

    parser = argparse.ArgumentParser(prog="tfx", description="Train, continue, fine-tune and serve TranscriptFormer models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("registry", help="list registered components, plugins included")
    p.set_defaults(func=cmd_registry)

    p = sub.add_parser("infer", help="cell / contextual-gene embeddings and log-likelihoods for an h5ad",
                       epilog="The reference's flags (--checkpoint-path, --data-file, --output-path, --output-filename, "
                              "--gene-col-name, --pretrained-embedding, --num-gpus) are accepted too.")
    p.add_argument("--checkpoint", "--checkpoint-path", required=True,
                   help="checkpoint directory (official release or tfx export)")
    p.add_argument("--data", "--data-file", required=True, help="input h5ad (raw counts)")
    p.add_argument("--output", default=None, help="output h5ad (required)")
    p.add_argument("--output-path", default=None, help=argparse.SUPPRESS)
    p.add_argument("--output-filename", default="embeddings.h5ad", help=argparse.SUPPRESS)
    p.add_argument("--emb-type", choices=["cell", "cge"], default="cell",
                   help="cell embeddings, or contextual gene embeddings (cge)")
    p.add_argument("--outputs", default="embeddings",
                   help=f"comma list of: {', '.join(INFER_OUTPUTS)} (predictions: a fine-tuned checkpoint's task head)")
    p.add_argument("--batch-size", type=POSITIVE, default=256,
                   help="most cells per batch, %(type)s (the reference's default is 8)")
    p.add_argument("--token-budget", type=POSITIVE, default=16384, help="most cells x padded length per batch, %(type)s")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    p.add_argument("--devices", "--num-gpus", type=Range(int, lo=1, also=(-1,)), default=1,
                   help="processes, one per GPU (-1: every GPU), %(type)s")
    p.add_argument("--precision", choices=["32", "bf16-mixed", "16-mixed"], default="32",
                   help="the reference's default is 16-mixed; 32 is exact on any device")
    p.add_argument("--attention", default=None, help="attention backend (registry name); default: the checkpoint's")
    p.add_argument("--gene-col", "--gene-col-name", default=None,
                   help="var column of gene ids ('index' for the var index); default: the checkpoint's (ensembl_id)")
    p.add_argument("--use-raw", type=_use_raw, default=None, help="auto (default), true or false")
    p.add_argument("--remove-duplicate-genes", action="store_true", help="keep the first of genes listed twice")
    p.add_argument("--clip-counts", type=Range(float, above=0), default=None,
                   help="clip counts at this value, %(type)s; default: what the checkpoint records (30 for official releases)")
    p.add_argument("--chunk-size", type=POSITIVE, default=4096, help="cells read from the file at a time, %(type)s")
    p.add_argument("--species-embedding", "--pretrained-embedding", nargs="+", default=None,
                   help="gene embedding h5 files of out-of-distribution species")
    p.add_argument("--model-type", choices=["transcriptformer", "esm2ce"], default="transcriptformer",
                   help="esm2ce: the ESM2-CE baseline, each cell the pooled frozen protein embeddings of its genes "
                        "(no transformer; embeddings only)")
    p.add_argument("--embedding-layer-index", type=int, default=-1,
                   help="transformer layer the embeddings come from (-1: the last; embeddings only otherwise)")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("generate", help="sample cells from a checkpoint (an h5ad of raw counts)")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (official release or tfx export)")
    p.add_argument("--species", required=True, help="a species of the checkpoint's vocabulary")
    p.add_argument("--n-cells", type=int, required=True, help="cells to sample, at least 1")
    p.add_argument("--output", required=True, help="output h5ad")
    p.add_argument("--assay", default=None, help="assay token (default: unknown)")
    p.add_argument("--prompt", default=None, help="GENE[:COUNT],... that every cell starts with")
    p.add_argument("--order", choices=["var", "free"], default="var", help="var: genes in vocabulary (var) order, as cells are "
                   "read; free: any order the model prefers (kept in obsm['generation_order'])")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of each gene draw, > 0")
    p.add_argument("--top-k", type=POSITIVE, default=None, help="draw among the k likeliest genes only, %(type)s")
    p.add_argument("--max-genes", type=POSITIVE, default=None, help="most genes per cell, %(type)s (default: seq_len - 1)")
    p.add_argument("--seed", type=COUNT, default=0, help="random seed, %(type)s")
    p.add_argument("--batch-size", type=POSITIVE, default=64, help="cells sampled at once, %(type)s")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="auto: CUDA when present")
    p.add_argument("--attention", default=None, help="attention backend of the full forward (registry name)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("prompt", help="ask a checkpoint: next gene, gene-gene effects, cell-type programmes")
    queries = p.add_subparsers(dest="query", required=True, help="the question asked")
    q_next = queries.add_parser("next", help="the next gene's distribution after a prompt (top k, expected counts)")
    q_next.add_argument("--prompt", default="", help="GENE[:COUNT],... (empty: what a cell starts with)")
    q_next.add_argument("--top-k", type=POSITIVE, default=20, help="genes listed, %(type)s")
    q_next.add_argument("--output", default=None, help="also write the table as CSV")
    q_pair = queries.add_parser("gene-gene", help="log p(g2 next | g1) - log p(g2 next | nothing): CSV and heatmap")
    q_pair.add_argument("--genes", required=True, help="G1,G2,... or a file with one gene per line")
    q_pair.add_argument("--count", type=Range(float, above=0), default=1.0, help="count of the prompt gene, %(type)s")
    q_pair.add_argument("--output", required=True, help="directory for gene_gene.csv and gene_gene.png")
    q_prog = queries.add_parser("programmes", help="rank candidate genes for each cell type's marker prompt")
    q_prog.add_argument("--data", required=True, help="a labelled h5ad of raw counts")
    q_prog.add_argument("--label", default="cell_type", help="obs column of cell types")
    q_prog.add_argument("--candidates", required=True, help="G1,G2,... or a file with one gene per line (e.g. TFs)")
    q_prog.add_argument("--markers", type=POSITIVE, default=6, help="most expressed markers per type in the prompt, %(type)s")
    q_prog.add_argument("--cells", type=POSITIVE, default=64,
                        help="sampled cells per type (importance-weighted: markers.csv says how many they weigh as), %(type)s")
    q_prog.add_argument("--order", choices=["var", "free"], default="var", help="generation order (see tfx generate)")
    q_prog.add_argument("--gene-col", default="ensembl_id", help="var column of gene ids ('index' for the var index)")
    q_prog.add_argument("--seed", type=COUNT, default=0, help="random seed, %(type)s")
    q_prog.add_argument("--output", required=True, help="directory for programmes.csv, markers.csv, programmes.png")
    for q in (q_next, q_pair, q_prog):
        q.add_argument("--checkpoint", required=True, help="checkpoint directory (official release or tfx export)")
        q.add_argument("--species", required=True, help="a species of the checkpoint's vocabulary")
        q.add_argument("--assay", default=None, help="assay token (default: unknown)")
        q.formatter_class = _Help
    p.set_defaults(func=cmd_prompt)

    p = sub.add_parser("shard", help="h5ad files of one species -> WebDataset shards for any model")
    p.add_argument("--input", required=True, nargs="+", help="h5ad files (raw counts)")
    p.add_argument("--species", required=True, help="species name, e.g. homo_sapiens (see tfx registry)")
    p.add_argument("--output", required=True, help="output directory (a re-run completes an interrupted one)")
    p.add_argument("--cells-per-shard", type=POSITIVE, default=10000, help="cells per shard, %(type)s")
    p.add_argument("--obs-keys", nargs="*", default=[], help="obs columns to store besides cell_type, assay, tissue")
    p.add_argument("--processes", type=POSITIVE, default=None, help="writer processes, %(type)s (default: one per CPU)")
    p.add_argument("--gene-col", default="ensembl_id", help="var column of gene ids ('index' for the var index)")
    p.add_argument("--use-raw", type=_use_raw, default=None, help="auto (default), true or false")
    p.add_argument("--remove-duplicate-genes", action="store_true", help="keep the first of genes listed twice")
    p.set_defaults(func=cmd_shard)

    p = sub.add_parser("embed-proteins", help="per-gene ESM-2 embeddings of a protein FASTA, as a species gene h5")
    p.add_argument("--fasta", required=True, help="protein FASTA (.fa or .fa.gz); Ensembl peptide headers carry gene:ID")
    p.add_argument("--model", default="esm2_t36_3B_UR50D",
                   help="fair-esm model name (read from the torch hub cache) or a local .pt file")
    p.add_argument("--output", required=True, help="output SPECIES_gene.h5")
    p.add_argument("--gene-map", default=None, help="TSV of protein_id<TAB>gene_id, for headers without gene:ID")
    p.add_argument("--layer", type=int, default=33, help="representation layer (0 = token embeddings, -1 = the last)")
    p.add_argument("--isoforms", choices=["first", "longest", "mean"], default="first",
                   help="the gene's first or longest protein, or the mean of all its proteins' embeddings")
    p.add_argument("--max-residues", type=POSITIVE, default=1022, help="residues kept per protein, %(type)s")
    p.add_argument("--token-budget", type=POSITIVE, default=4096,
                   help="most tokens (sequences x padded length) per batch, %(type)s")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    p.set_defaults(func=cmd_embed_proteins)

    p = sub.add_parser("add-species", help="a checkpoint whose vocabulary also holds new species' genes")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory to extend")
    p.add_argument("--embeddings", required=True, nargs="+", help="SPECIES_gene.h5 files (official layout)")
    p.add_argument("--output", required=True, help="new checkpoint directory (absent or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already at --output")
    p.set_defaults(func=cmd_add_species)

    p = sub.add_parser("download", help="fetch an official release (tf-sapiens, ...) or the species embeddings")
    p.add_argument("name", choices=["tf-sapiens", "tf-exemplar", "tf-metazoa", "all-embeddings", "all"], help="the release to fetch")
    p.add_argument("--checkpoint-dir", default="./checkpoints", help="unpacked to DIR/tf_sapiens/ etc. (default ./checkpoints)")
    p.add_argument("--base-url", default=None,
                   help="a mirror serving NAME.tar.gz (default: https://czi-transcriptformer.s3.amazonaws.com/weights)")
    p.add_argument("--retries", type=COUNT, default=3, help="resumed retries after a dropped connection, %(type)s")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("download-data", help="CELLxGENE datasets of chosen species (needs pip install 'tfx[data]')")
    p.add_argument("--species", required=True, nargs="+",
                   help="binomials, e.g. 'homo sapiens' 'mus musculus' (or one comma-separated list)")
    p.add_argument("--output-dir", default="./data/cellxgene", help="directory the datasets (and their metadata) are written to")
    p.add_argument("--processes", type=POSITIVE, default=4, help="datasets downloaded at once, %(type)s")
    p.add_argument("--max-retries", type=POSITIVE, default=5, help="attempts per dataset, %(type)s")
    p.add_argument("--census-version", default="stable", help="the CELLxGENE Census release to list and fetch")
    p.add_argument("--no-metadata", action="store_true", help="skip OUTPUT/dataset_metadata.json")
    p.add_argument("--shard", action="store_true", help="also write WebDataset shards to OUTPUT/shards/<species>/<dataset_id>/")
    p.add_argument("--cells-per-shard", type=POSITIVE, default=10_000, help="with --shard, %(type)s")
    p.set_defaults(func=cmd_download_data)

    p = sub.add_parser("synth", help="write the seeded synthetic multi-species atlas (h5ad + gene embeddings)")
    p.add_argument("--output", required=True, help="directory for <species>.h5ad and <species>_gene.h5")
    p.add_argument("--species", type=Range(int, 1, 8), default=3,
                   help="number of species: synth_alpha, synth_beta, ..., %(type)s")
    p.add_argument("--cells", type=POSITIVE, default=600, help="cells per species, %(type)s")
    p.add_argument("--genes", type=POSITIVE, default=800,
                   help="genes per species (75%% of them one-to-one orthologs), %(type)s")
    p.add_argument("--seed", type=COUNT, default=0, help="%(type)s")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("eval", help="label probes, species mixing and UMAPs of cell embeddings, beside a PCA baseline")
    p.add_argument("--embeddings", required=True, nargs="+",
                   help="h5ad files with obsm['embeddings'] (tfx infer outputs, e.g. one per species)")
    p.add_argument("--label", default="cell_type", help="obs column to predict")
    p.add_argument("--batch", default=None, help="obs column for mixing metrics, e.g. species")
    p.add_argument("--counts", nargs="+", default=None,
                   help="the h5ad files given to tfx infer, in the same order: adds the PCA-of-log-counts baseline")
    p.add_argument("--checkpoint", default=None,
                   help="the checkpoint the embeddings came from: adds its ESM2-CE baseline (pooled protein "
                        "embeddings, no transformer) beside them; needs --counts")
    p.add_argument("--compare", nargs="+", default=None,
                   help="h5ad files with other embeddings of the same cells (e.g. a model trained without a species, "
                        "or --model-type esm2ce): paired per-fold differences with a bootstrap CI")
    p.add_argument("--no-cz-benchmarks", action="store_true",
                   help="skip the cz-benchmarks tasks (run when the package is installed); the light probes still run")
    p.add_argument("--homology", default=None, metavar="HELD_gene.h5",
                   help="the held-out species' gene embedding file: transfer accuracy by the share of each held-out "
                        "cell's counts on genes with a close homolog among the checkpoint's genes; needs "
                        "--checkpoint and --counts")
    p.add_argument("--homology-threshold", type=Range(float, above=0, hi=1), default=0.8,
                   help="cosine similarity to the nearest training gene that makes a close homolog, %(type)s")
    p.add_argument("--output", required=True, help="report directory")
    p.add_argument("--seed", type=COUNT, default=0, help="%(type)s")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("quickstart", help="synth -> shard -> pretrain tiny -> export -> infer -> eval, on CPU")
    p.add_argument("--output", default="quickstart", help="directory for every step's output")
    p.add_argument("--species", type=Range(int, 1, 8), default=3, help="number of species, %(type)s")
    p.add_argument("--cells", type=POSITIVE, default=600, help="cells per species, %(type)s")
    p.add_argument("--steps", type=POSITIVE, default=quickstart_steps, help="pretraining steps (of 1,024 tokens), %(type)s")
    p.add_argument("--seed", type=COUNT, default=0, help="%(type)s")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("train", help="run a Hydra recipe: pretraining, continuation or fine-tuning")
    p.add_argument("recipe", nargs="?", help="a packaged recipe (e.g. pretrain/tiny; see --list) or a YAML file")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. data.shards=DIR output_dir=runs/x")
    p.add_argument("--list", action="store_true", help="list the recipes with their descriptions")
    p.add_argument("--check", action="store_true",
                   help="compose and build the recipe, print it resolved and the parameter count; train nothing, "
                        "write nothing")
    p.add_argument("--recipes", default=None, metavar="DIR",
                   help="a directory of your own recipes, searched before the packaged ones (or set TFX_RECIPES)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="consolidated inference checkpoint from a training run (ZeRO shards too)")
    p.add_argument("run_dir", help="a tfx train output_dir")
    p.add_argument("--output", required=True, help="checkpoint directory to write (absent or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already at --output")
    p.add_argument("--lora-form", choices=["merged", "adapter"], default=None,
                   help="a LoRA run: adapters merged into the weights (the reference loads it) or kept as a "
                        "small file beside the base checkpoint; default: the recipe's finetune.export")
    p.set_defaults(func=cmd_export)
    for p in sub.choices.values():
        p.formatter_class = _Help
    return parser


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "💡 Tip" not in str(record.msg)


def _quiet_third_parties() -> None:
    """Normal output without libraries' adverts and deprecation notices (-v shows them)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_NoAdverts())
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(lightning|pytorch_lightning|torch|deepspeed)\b")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # a usage error (2, printed by argparse) or --help (0)
        return done.code
    if args.command == "infer":
        _note_reference_flags(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning").propagate = False  # it prints through its own handler: once is enough
    if not args.verbose:
        _quiet_third_parties()
    from tfx.artifacts import DownloadError, PortalError
    from tfx.errors import Interrupted, TfxError

    try:
        return args.func(args)
    except (TfxError, DownloadError, PortalError, KeyError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"tfx {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"tfx {args.command}: interrupted: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print(f"tfx {args.command}: interrupted (Ctrl-C); nothing half-written is kept, "
              "run the same command again", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
