"""The `tfx` command: parses, delegates and prints. Each command's options are a dataclass (its
fields declare flags, types, bounds, defaults and help once; tfx/options.py), and the parser is
generated from it; only the command being run imports its module."""

from __future__ import annotations

import errno
import logging
import os
import sys
from importlib import import_module

from tfx.commands import INTERRUPTED, REFERENCE_FLAGS
from tfx.noise import quiet_third_parties
from tfx.options import Help, Parser, add_arguments, from_args

COMMANDS = {  # name: (help, its options dataclass: "module:Class", or a class of tfx.commands)
    "registry": ("list registered components, plugins included", "RegistryCommand"),
    "infer": ("cell / contextual-gene embeddings and log-likelihoods for an h5ad", "tfx.infer.options:InferCommand"),
    "generate": ("sample cells from a checkpoint (an h5ad of raw counts)", "tfx.generate.options:GenerateCommand"),
    "prompt": ("ask a checkpoint: next gene, gene-gene effects, cell-type programmes", None),
    "shard": ("h5ad files or SOMA experiments of one species -> WebDataset shards for any model", "ShardCommand"),
    "embed-proteins": ("per-gene ESM-2 embeddings of a protein FASTA, as a species gene h5", "EmbedProteinsCommand"),
    "add-species": ("a checkpoint whose vocabulary also holds new species' genes", "AddSpeciesCommand"),
    "download": ("fetch an official release (tf-sapiens, ...) or the species embeddings", "DownloadCommand"),
    "download-data": ("CELLxGENE datasets of chosen species (needs pip install 'tfx[data]')", "DownloadDataCommand"),
    "synth": ("write the seeded synthetic multi-species atlas (h5ad + gene embeddings)", "SynthCommand"),
    "eval": ("label probes, species mixing and UMAPs of cell embeddings, beside a PCA baseline",
             "tfx.eval.run:EvalCommand"),
    "quickstart": ("synth -> shard -> pretrain tiny -> export -> infer -> eval, on CPU", "QuickstartCommand"),
    "train": ("run a Hydra recipe: pretraining, continuation or fine-tuning", "TrainCommand"),
    "export": ("consolidated inference checkpoint from a training run (ZeRO shards too)", "ExportCommand"),
}


def cmd_registry(opts) -> None:
    from tfx.registry import describe

    current = None
    for kind, name, origin in describe():
        if kind != current:
            print(f"{kind}:")
            current = kind
        print(f"  {name:<28} {origin}")


def cmd_infer(opts) -> None:
    from tfx.infer.run import infer_file, load_for_inference

    ckpt = load_for_inference(opts.checkpoint, opts.load)
    summary = infer_file(ckpt, opts.data, opts.output_file, opts.options)
    if summary["output"] is None:  # a rank other than 0: its chunks are written, rank 0 writes the output
        return
    rate = summary["cells"] / max(summary["seconds"], 1e-9)
    print(f"wrote {summary['output']}: {summary['cells']} cells in {summary['seconds']:.1f} s ({rate:.0f} cells/s)")


def cmd_generate(opts) -> None:
    from tfx.checkpoint import load_checkpoint
    from tfx.generate.run import generate_file
    from tfx.infer.run import resolve_devices

    ckpt = load_checkpoint(opts.checkpoint, attention=opts.attention)
    summary = generate_file(ckpt, opts.output, opts.options, resolve_devices(opts.options.device)[0])
    print(f"wrote {summary['output']}: {summary['cells']} cells, {summary['mean_genes']:.1f} genes on average, "
          f"{summary['ended']} ended by [END]; counts {summary['counts'].split(':')[0]}")


def cmd_prompt(opts) -> None:
    from tfx.generate import ask

    if isinstance(opts, ask.NextOptions):
        table = ask.ask_next(opts)
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    elif isinstance(opts, ask.GeneGeneOptions):
        csv, png, genes = ask.ask_gene_gene(opts)
        print(f"wrote {csv}{f' and {png}' if png else ''} ({len(genes)} genes)")
    else:
        table = ask.ask_programmes(opts)
        for cell_type, row in table.iterrows():
            print(f"{cell_type}: {', '.join(row.sort_values(ascending=False).index[:5])}")
        print(f"wrote {opts.output}/programmes.csv, markers.csv, programmes.png")


def cmd_shard(opts) -> None:
    from tfx.data.shards import write_shards

    summary = write_shards(opts.input, opts.species, opts.output, cells_per_shard=opts.cells_per_shard,
                           obs_keys=opts.obs_keys, processes=opts.processes, gene_col=opts.gene_col,
                           use_raw=opts.use_raw, remove_duplicate_genes=opts.remove_duplicate_genes,
                           measurement=opts.measurement, obs_filter=opts.obs_filter)
    print(f"wrote {summary['manifest']}: {summary['cells']} cells in {summary['shards']} shards "
          f"({summary['written']} written by this run) in {summary['seconds']:.1f} s")


def cmd_embed_proteins(opts) -> None:
    from tfx.esm import embed_proteins
    from tfx.progress import progress

    with progress(unit="seq", desc="embed-proteins") as bar:
        def show(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        summary = embed_proteins(
            opts.fasta, opts.output, opts.model, gene_map=opts.gene_map, layer=opts.layer, isoforms=opts.isoforms,
            max_residues=opts.max_residues, token_budget=opts.token_budget, device=opts.device, progress=show,
        )
    print(f"wrote {summary['output']}: {summary['genes']} genes x {summary['dim']} "
          f"({summary['computed']} computed, {summary['resumed']} resumed) in {summary['seconds']:.1f} s")


def cmd_add_species(opts) -> None:
    from tfx.checkpoint import check_output_dir, load_checkpoint, save_checkpoint
    from tfx.checkpoint.surgery import add_species

    check_output_dir(opts.output, opts.overwrite, inputs=[opts.checkpoint, *opts.embeddings])
    ckpt = add_species(load_checkpoint(opts.checkpoint), opts.embeddings)
    save_checkpoint(ckpt, opts.output)
    print(f"wrote {opts.output}: vocabulary of {len(ckpt.vocab)} tokens ({', '.join(f for f, _ in ckpt.vocab.files)})")


def cmd_download(opts) -> None:
    from tfx.artifacts import download_artifacts

    records = download_artifacts(opts.name, opts.checkpoint_dir, base_url=opts.base_url, retries=opts.retries)
    for r in records:
        if r["status"] == "present":
            print(f"{r['path']}: already present, nothing to do")
        else:
            check = "sha256 verified" if r["sha256"] else "size verified; no checksum published"
            print(f"{r['path']}: downloaded {r['bytes'] / 2**20:.1f} MiB from {r['url']} ({check}), unpacked")


def cmd_download_data(opts) -> None:
    from tfx.artifacts import CensusPortal, download_data, shard_from_census

    if opts.from_census:
        summary = shard_from_census(CensusPortal(opts.census_version), opts.species, opts.output_dir,
                                    obs_filter=opts.obs_filter, cells_per_shard=opts.cells_per_shard,
                                    processes=opts.processes)
        for species, s in summary["species"].items():
            print(f"{species}: {s['cells']} cells ({summary['obs_filter']}) in {s['shards']} shards, {s['manifest']}")
        return

    summary = download_data(CensusPortal(opts.census_version), opts.species, opts.output_dir,
                            processes=opts.processes, max_retries=opts.max_retries, save_metadata=not opts.no_metadata,
                            shard=opts.shard, cells_per_shard=opts.cells_per_shard)
    sharded = f", {summary['sharded']} sharded" if opts.shard else ""
    print(f"{summary['output']}: {summary['selected']} of {summary['listed']} listed datasets selected; "
          f"{summary['downloaded']} downloaded, {summary['present']} already present{sharded}")


def cmd_synth(opts) -> None:
    from tfx.synth import synth_atlas

    summary = synth_atlas(opts.output, species=opts.species, cells=opts.cells, genes=opts.genes, seed=opts.seed)
    for s in summary["species"].values():
        g = s["genes_per_cell"]
        print(f"wrote {s['h5ad']} ({s['cells']} cells x {s['genes']} genes; {g['min']} to {g['max']} "
              f"expressed genes per cell, median {g['median']:.0f}) and {s['gene_h5']}")


def cmd_eval(opts) -> None:
    from tfx.eval.run import eval_files, summary_lines

    report = eval_files(opts)
    print("\n".join(summary_lines(report)))
    print(f"wrote {opts.output}/report.json, summary.md, {', '.join(report['plots'])}")


def cmd_quickstart(opts) -> None:
    from tfx.quickstart import quickstart

    report = quickstart(opts.output, species=opts.species, cells=opts.cells, steps=opts.steps, seed=opts.seed)
    print("headline (5-fold CV on cell_type, macro-F1):")
    for key, value in report["headline"].items():
        print(f"  {key:<40} {value if not isinstance(value, float) else f'{value:.3f}'}")
    m = report["prompting"]["mean"]
    print(f"prompting AUROC on the atlas's true marker programmes: {m['auroc']:.3f} (lift {m['lift_auroc']:.3f}; "
          f"gene frequency alone {m['frequency_auroc']:.3f})")
    print(f"what this shows, and what it does not: {opts.output}/report/summary.md")


def cmd_train(opts) -> None:
    if opts.list_recipes:
        from tfx.recipe import available

        for name, (_, description) in available(opts.recipes).items():
            print(f"  {name:<24} {description}")
        return
    from tfx.recipe import compose, recipe_path

    cfg = compose(opts.recipe, opts.overrides, opts.recipes)
    recipe_file = str(recipe_path(opts.recipe, opts.recipes))
    from tfx.train.run import check, train

    print(check(cfg, recipe_file) if opts.check else f"exported {train(cfg, recipe_file)}")


def cmd_export(opts) -> None:
    from tfx.train.export import export_run

    print(f"exported {export_run(opts.run_dir, opts.output, overwrite=opts.overwrite, lora_form=opts.lora_form)}")


def build_parser(only: str | None = None) -> Parser:
    """The `tfx` parser: every command's options, or only those of the command ``only`` (its module is
    the only one imported)."""
    parser = Parser(prog="tfx", description="Train, continue, fine-tune and serve TranscriptFormer models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (text, path) in COMMANDS.items():
        epilog = "The reference's flags are accepted too: " + ", ".join(REFERENCE_FLAGS) if name == "infer" else None
        p = sub.add_parser(name, help=text, formatter_class=Help, epilog=epilog)
        p.set_defaults(run=globals()["cmd_" + name.replace("-", "_")])
        if only not in (None, name):
            continue
        if path:
            module, cls = path.split(":") if ":" in path else ("tfx.commands", path)
            p.set_defaults(options=getattr(import_module(module), cls))
            add_arguments(p, p.get_default("options"))
            continue
        from tfx.generate.options import QUESTIONS

        questions = p.add_subparsers(dest="query", required=True, help="the question asked")
        for query, cls in QUESTIONS.items():  # each one's help: its options' docstring
            q = questions.add_parser(query, help=cls.__doc__.split(": ", 1)[1].rstrip("."), formatter_class=Help)
            add_arguments(q, cls)
            q.set_defaults(options=cls)
    return parser


def _note_reference_flags(argv: list[str]) -> None:
    for flag, ours in REFERENCE_FLAGS.items():
        if any(a == flag or a.startswith(flag + "=") for a in argv):
            print(f"tfx: note: {flag} is the reference's name for {ours}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        command = next((a for a in argv if a in COMMANDS), "")  # only its options are built (and imported)
        args, extra = (parser := build_parser(command)).parse_known_args(argv)
        if extra and (command != "train" or any(a.startswith("-") for a in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if extra:  # train's overrides after a flag: argparse ends its positionals at the first flag
            args.overrides = args.overrides + extra
    except SystemExit as done:  # a usage error (2, printed as one line) or --help (0)
        return done.code
    if args.command == "infer":
        _note_reference_flags(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning").propagate = False  # it prints through its own handler: once is enough
    if not args.verbose:
        quiet_third_parties()
    from tfx.artifacts import DownloadError, PortalError
    from tfx.errors import Interrupted, Terminated, TfxError, sigterm_ends_as_ctrl_c

    try:
        with sigterm_ends_as_ctrl_c():
            args.run(from_args(args.options, args))  # prints what it did; any failure raises
        return 0
    except (TfxError, DownloadError, PortalError) as err:
        print(f"tfx {args.command}: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"tfx {args.command}: interrupted: {err}", file=sys.stderr)
        return err.code
    except OSError as err:  # the machine failed, not the input: writes are atomic, so nothing half-written stays
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO):
            raise
        failure = os.strerror(err.errno) + (f" ({err.filename})" if err.filename else "")
    except KeyboardInterrupt as stop:
        kept = INTERRUPTED.get(args.command, "nothing half-written is kept, run the same command again")
        name, code = ("SIGTERM", 143) if isinstance(stop, Terminated) else ("Ctrl-C", 130)
        print(f"tfx {args.command}: interrupted ({name}); {kept.format(output=getattr(args, 'output', ''))}",
              file=sys.stderr)
        return code
    print(f"tfx {args.command}: failed: {failure}; nothing half-written is kept: free the space and run the same "
          "command again", file=sys.stderr)
    return 1


def entry() -> None:
    """The `tfx` script. After a failed disk (exit 1) it skips the exit handlers: HDF5's own would crash
    flushing the file it could not write, turning the one-line failure into a segmentation fault.
    OpenMP's waiting threads sleep instead of spinning unless the user chose otherwise: on a shared
    machine, spinning threads cost many times the work (tools/bench/threads.py, docs/benchmarks.md)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once, when torch first starts its pool
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code) if code == 1 else sys.exit(code)


if __name__ == "__main__":
    entry()
