"""`tfx quickstart`: the whole framework end to end on the built-in synthetic atlas.

synth -> shard -> pretrain (tiny) -> export -> infer -> eval, each step through the same code
the commands use. Re-running it in the same directory reuses what is complete.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)
STEPS = 1500  # pretraining steps of 1,024 tokens: about 2.5 minutes on 2 CPU cores


def quickstart(output: str | Path = "quickstart", species: int = 3, cells: int = 600, steps: int = STEPS,
               seed: int = 0) -> dict:
    from tfx.checkpoint import load_checkpoint
    from tfx.data.shards import write_shards
    from tfx.eval.report import evaluate
    from tfx.infer.run import InferOptions, infer_file
    from tfx.synth import synth_atlas
    from tfx.recipe import compose
    from tfx.train.run import train

    out = Path(output)
    started = time.perf_counter()

    def step(name: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {name}", flush=True)

    step(f"synth: {species} species x {cells} cells -> {out / 'atlas'}")
    atlas = synth_atlas(out / "atlas", species=species, cells=cells, seed=seed)["species"]
    step("shard: h5ad -> WebDataset shards")
    for name, files in atlas.items():
        write_shards([files["h5ad"]], name, out / "shards" / name, cells_per_shard=max(1, cells // 4), processes=1)
    step(f"pretrain: recipes/pretrain/tiny, {steps} steps on CPU")
    shards = ",".join(str(out / "shards" / name) for name in atlas)
    genes = ",".join(files["gene_h5"] for files in atlas.values())
    export = train(compose("pretrain/tiny", [f"data.shards=[{shards}]", f"vocab.embeddings=[{genes}]",
                                             f"output_dir={out / 'run'}", f"trainer.max_steps={steps}",
                                             f"seed={seed}", "trainer.accelerator=cpu", "data.token_budget=1024"]))
    step(f"infer: cell embeddings from {export}")
    ckpt = load_checkpoint(export)
    embeddings = []
    for name, files in atlas.items():
        path = out / "embeddings" / f"{name}.h5ad"
        infer_file(ckpt, files["h5ad"], path, InferOptions(device="cpu"))
        embeddings.append(path)
    step("eval: probes, species mixing, UMAPs")
    report = evaluate(embeddings, "cell_type", batch="species", counts_path=[f["h5ad"] for f in atlas.values()],
                      output_dir=out / "report", seed=seed)
    step(f"done: report in {out / 'report'} (summary.md, report.json, UMAP PNGs)")
    return report
