"""The tutorial notebook (docs/tutorial.ipynb) runs headless from top to bottom, so it cannot rot:
a real kernel (nbclient), a small atlas, a random-weight checkpoint the reference package builds
over the atlas's genes in place of `tfx quickstart`'s export."""

from __future__ import annotations

import anndata
import nbformat
import pytest
from nbclient import NotebookClient

import reference
from conftest import ROOT
from tfx.synth import synth_atlas

NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"


@pytest.mark.slow
def test_tutorial_notebook_runs_headless(tmp_path):
    atlas = synth_atlas(tmp_path / "atlas", species=2, cells=60, seed=0)
    genes = {name: list(anndata.read_h5ad(s["h5ad"]).var["ensembl_id"]) for name, s in atlas["species"].items()}
    ckpt = reference.build_reference_checkpoint(tmp_path / "ckpt", genes, seq_len=63, seed=0)

    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    # as papermill does: a cell after the parameters overrides them
    nb.cells.insert(params[0] + 1, nbformat.v4.new_code_cell(
        f"ATLAS = {str(tmp_path / 'atlas')!r}\nCHECKPOINT = {str(ckpt)!r}\nSPECIES = 2\nCELLS = 60"))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    table = next(o for c in nb.cells if "reports = " in c.source for o in c.outputs if o.output_type == "execute_result")
    assert "knn_macro_f1" in table.data["text/plain"] and "X_esm2ce" in table.data["text/plain"]
    assert any("image/png" in o.get("data", {}) for o in nb.cells[-1].outputs)  # the UMAP was drawn
