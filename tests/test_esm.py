"""`tfx embed-proteins`: per-gene embeddings equal an independent fair-esm computation."""

from __future__ import annotations

import argparse
import functools
import pathlib

import esm
import h5py
import numpy as np
import pytest
import torch

from tfx.errors import InputError
from tfx.esm import embed_proteins
from tfx.esm.embed import progress_path
from tfx.vocab import read_gene_embeddings

LAYER = 1  # of 2: an inner layer, as the default 33 of 36 is
AMINO = "LAGVSERTIDPKQNFYMHWC"

# (protein id, gene id as in the header, sequence); several proteins per gene, interleaved.
_rng = np.random.default_rng(3)


def _seq(n: int) -> str:
    return "".join(_rng.choice(list(AMINO), size=n))


_SHARED = _seq(33)
PROTEINS = [
    ("ENSP01.1", "ENSG01.4", _seq(40)),
    ("ENSP02.2", "ENSG02.1", _seq(1100)),  # longer than the 1,022 residues kept
    ("ENSP03.1", "ENSG01.4", _seq(30) + "*" + _seq(40) + "*"),  # stops read as unknown
    ("ENSP04.1", "ENSG03.2", _SHARED),
    ("ENSP05.1", "ENSG02.1", _seq(25)),
    ("ENSP06.1", "ENSG01.4", _seq(55)),
    ("ENSP07.1", "ENSG04.1", _SHARED),  # the same sequence in another gene
    ("ENSP08.1", "ENSG03.2", _SHARED),  # and twice in one gene
]
GENES = ["ENSG01", "ENSG02", "ENSG03", "ENSG04"]


def write_fasta(path: pathlib.Path, records) -> pathlib.Path:
    path.write_text("".join(f">{header}\n{seq[:60]}\n{seq[60:]}\n" for header, seq in records))
    return path


def ensembl_fasta(path: pathlib.Path) -> pathlib.Path:
    records = [(f"{p} pep chromosome:GRCz11:1:1:99:1 gene:{g} transcript:ENST{p[4:]} gene_biotype:protein_coding", s)
               for p, g, s in PROTEINS]
    records.append(("ENSP09.1 pep scaffold:x:1:1:1 transcript:ENST09.1", _seq(20)))  # no gene: skipped
    return write_fasta(path, records)


@pytest.fixture(scope="module")
def tiny_esm(tmp_path_factory) -> tuple[torch.nn.Module, object, pathlib.Path]:
    """A random 2-layer ESM-2 and the same weights saved as fair-esm's official files are."""
    torch.manual_seed(0)
    model = esm.model.esm2.ESM2(num_layers=2, embed_dim=32, attention_heads=4, alphabet="ESM-1b").eval()
    state = {f"encoder.{k}": v for k, v in model.state_dict().items() if "contact_head.regression" not in k}
    hyper = argparse.Namespace(encoder_layers=2, encoder_embed_dim=32, encoder_attention_heads=4, token_dropout=True)
    path = tmp_path_factory.mktemp("esm") / "esm2_t2_tiny.pt"
    torch.save({"model": state, "cfg": {"model": hyper}}, path)
    return model, model.alphabet, path


def fair_esm_embeddings(model, alphabet, sequences: list[str]) -> list[np.ndarray]:
    """fair-esm's own batch converter and forward, each protein's layer mean over its residues."""
    convert = alphabet.get_batch_converter(truncation_seq_length=1022)
    _, _, tokens = convert([(str(i), s.replace("*", "<unk>")) for i, s in enumerate(sequences)])
    with torch.no_grad():
        reps = model(tokens, repr_layers=[LAYER])["representations"][LAYER]
    return [reps[i, 1:min(len(s), 1022) + 1].mean(0).numpy() for i, s in enumerate(sequences)]


@functools.cache
def _protein_embeddings(model, alphabet) -> list[np.ndarray]:
    return fair_esm_embeddings(model, alphabet, [s for _, _, s in PROTEINS])


def expected(tiny_esm, isoforms: str) -> np.ndarray:
    embs = _protein_embeddings(*tiny_esm[:2])
    rows = []
    for gene in GENES:
        mine = [(s, e) for (_, g, s), e in zip(PROTEINS, embs) if g.split(".")[0] == gene]
        if isoforms == "first":
            rows.append(mine[0][1])
        elif isoforms == "longest":
            rows.append(max(mine, key=lambda se: len(se[0]))[1])
        else:
            rows.append(np.mean([e for _, e in mine], axis=0))
    return np.stack(rows)


@pytest.mark.parametrize("isoforms", ["first", "longest", "mean"])
def test_embeddings_equal_fair_esm(tiny_esm, tmp_path, isoforms):
    fasta = ensembl_fasta(tmp_path / "pep.fa")
    out = tmp_path / "danio_rerio_gene.h5"
    summary = embed_proteins(fasta, out, tiny_esm[2], layer=LAYER, isoforms=isoforms, token_budget=300)

    genes, table = read_gene_embeddings(out)
    assert genes == GENES  # first appearance, versions stripped, the gene-less protein skipped
    np.testing.assert_allclose(table, expected(tiny_esm, isoforms), atol=2e-5, rtol=1e-5)
    assert summary["genes"] == 4 and summary["dim"] == 32 and summary["resumed"] == 0
    assert not progress_path(out).exists()
    with h5py.File(out) as f:  # the official layout
        assert set(f) == {"keys", "arrays"} and sorted(f["arrays"]) == GENES


def test_interrupted_run_resumes(tiny_esm, tmp_path):
    fasta = ensembl_fasta(tmp_path / "pep.fa")
    out = tmp_path / "fish_gene.h5"

    calls = []

    def interrupt(done, total):  # Ctrl-C after the second batch
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        embed_proteins(fasta, out, tiny_esm[2], layer=LAYER, isoforms="mean", token_budget=300, progress=interrupt)
    assert not out.exists()
    with h5py.File(progress_path(out)) as f:
        saved = sorted(f["arrays"])
    # Batch 1 held ENSG02's long protein only, so just batch 2's genes are complete.
    assert saved == ["ENSG01", "ENSG03", "ENSG04"]

    seen = []
    summary = embed_proteins(fasta, out, tiny_esm[2], layer=LAYER, isoforms="mean", token_budget=300,
                             progress=lambda done, total: seen.append((done, total)))
    assert summary["resumed"] == len(saved) and summary["computed"] == len(GENES) - len(saved)
    assert seen[-1][0] == seen[-1][1] == summary["sequences"]
    np.testing.assert_allclose(read_gene_embeddings(out)[1], expected(tiny_esm, "mean"), atol=2e-5, rtol=1e-5)
    assert not progress_path(out).exists()

    # Progress from other settings is never mixed in.
    with h5py.File(progress_path(out), "w") as f:
        f.attrs["recipe"] = "another model"
        f.create_group("arrays")
    with pytest.raises(InputError, match="other settings"):
        embed_proteins(fasta, out, tiny_esm[2], layer=LAYER)


def test_gene_map_and_hub_name(tiny_esm, tmp_path, monkeypatch):
    """UniProt-style headers through --gene-map; a fair-esm name read from the torch hub cache."""
    fasta = write_fasta(tmp_path / "uniprot.fa", [(f"sp|{p}|X_DANRE desc", s) for p, _, s in PROTEINS])
    gene_map = tmp_path / "map.tsv"
    gene_map.write_text("# protein\tgene\n" + "".join(f"sp|{p}|X_DANRE\t{g}\n" for p, g, _ in PROTEINS))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "esm2_t2_tiny.pt").write_bytes(tiny_esm[2].read_bytes())

    out = tmp_path / "fish_gene.h5"
    embed_proteins(fasta, out, "esm2_t2_tiny", gene_map=gene_map, layer=LAYER)
    genes, table = read_gene_embeddings(out)
    assert genes == GENES
    np.testing.assert_allclose(table, expected(tiny_esm, "first"), atol=2e-5, rtol=1e-5)

    with pytest.raises(InputError, match="place it locally and pass its path"):
        embed_proteins(fasta, out, "esm2_t36_3B_UR50D", gene_map=gene_map)


def test_bad_input_names_the_file_and_the_fix(tiny_esm, tmp_path):
    good = ensembl_fasta(tmp_path / "pep.fa")
    empty = tmp_path / "empty.fa"
    empty.write_text("")
    no_gene = write_fasta(tmp_path / "nogene.fa", [("sp|P1|X", "MKV"), ("sp|P2|Y", "MLL")])
    stray_map = tmp_path / "stray.tsv"
    stray_map.write_text("ENSP99\tENSG99\n")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    code = tmp_path / "code.pt"
    torch.save({"model": {}, "cfg": pathlib.PurePosixPath("a class weights_only refuses")}, code)
    out = tmp_path / "x_gene.h5"

    cases = [
        (dict(fasta=empty, model=tiny_esm[2]), "empty.fa: the FASTA file holds no protein"),
        (dict(fasta=no_gene, model=tiny_esm[2]), "nogene.fa: no protein has a gene.*--gene-map"),
        (dict(fasta=good, model=tiny_esm[2], gene_map=stray_map), "stray.tsv: none of its 1 protein ids"),
        (dict(fasta=good, model=garbage), "garbage.pt: not a loadable fair-esm model file"),
        (dict(fasta=good, model=code), "code.pt: not a loadable fair-esm model file"),
        (dict(fasta=good, model=tmp_path / "missing.pt"), "missing.pt: no such model file"),
        (dict(fasta=good, model=tiny_esm[2]), "--layer 33: .*esm2_t2_tiny.pt has 2 layers"),  # the default layer
    ]
    for kwargs, message in cases:
        with pytest.raises(InputError, match=message) as err:
            embed_proteins(output=out, **kwargs)
        assert "\n" not in str(err.value)
    assert not out.exists() and not progress_path(out).exists()
