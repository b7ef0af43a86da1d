"""Self-supervised pretraining on real cells (../shared/data/mouse_val.h5ad, 21 cell types):
the embeddings must carry cell-type signal, well above an untrained model and near a PCA of
log-normalised counts evaluated the same way. Gene embeddings are random stand-ins (no ESM-2
weights can be fetched here), so all the signal comes from training."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import MOUSE
from tfx.cli import main
from tfx.eval.report import evaluate
from tfx.train.run import compose, train
from tfx.vocab import write_gene_embeddings

STEPS = 300


@pytest.fixture(scope="module")
def runs(mouse, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mouse")
    genes = list(mouse.var["ensembl_id"])
    rng = np.random.default_rng(0)
    gene_file = tmp / "mus_musculus_gene.h5"
    write_gene_embeddings(gene_file, genes, rng.normal(size=(len(genes), 32)).astype(np.float32))
    reports = {}
    for name, steps in [("trained", STEPS), ("one_step", 1)]:
        train(compose("pretrain/tiny", ["data=h5ad", f"data.files=[{MOUSE}]", f"vocab.embeddings=[{gene_file}]",
                                        f"output_dir={tmp / name}", f"trainer.max_steps={steps}",
                                        "data.token_budget=4096", "optim.lr=3e-3", "data.order=random"]))
        emb = tmp / f"{name}.h5ad"
        assert main(["infer", "--checkpoint", str(tmp / name / "export"), "--data", str(MOUSE),
                     "--output", str(emb)]) == 0
        reports[name] = evaluate(emb, "cell_type", counts_path=MOUSE, output_dir=tmp / f"report_{name}")["headline"]
    return reports


def test_pretraining_on_real_cells_learns_cell_types(runs):
    trained, untrained = runs["trained"], runs["one_step"]
    print({k: {m: round(v, 3) for m, v in r.items() if isinstance(v, float)} for k, r in runs.items()})
    assert trained["logistic_macro_f1"] > untrained["logistic_macro_f1"] + 0.1
    assert trained["logistic_macro_f1"] >= 0.9 * trained["pca_logistic_macro_f1"]
