"""The streaming shard loader: every cell once per epoch tokenized as inference does, species mixed
by weight, resumption that skips consumed shards, corrupt shards named and handled by policy."""

from __future__ import annotations

import json
import os
import logging
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import MOUSE, write_h5ad
from tfx.data.anndata import CellReader
from tfx.errors import InputError
from tfx.data.labels import LabelCodec
from tfx.data.loader import ShardLoader, manifest_classes
from tfx.data.shards import ShardError, read_shard, write_shards
from tfx.tokenize import Preprocessing
from tfx.tokenize.batches import BatchSpec
from tfx.vocab import GeneVocab

SPECIALS = ["unknown", "[PAD]", "[START]", "[END]"]  # [PAD] is 1, not 0: padding must use vocab.pad
ASSAYS = {"unknown": 0, "a": 1, "b": 2}


def rows(batch) -> list[tuple]:
    """The cells of a batch (padded or packed) without padding: (gene ids, counts, aux ids) as hashable tuples."""
    cell_ids = torch.arange(len(batch.gene_ids))[:, None].expand_as(batch.gene_ids) if batch.cell_ids is None \
        else batch.cell_ids
    out = []
    for i in range(batch.n_cells):
        genes = (cell_ids == i) & (batch.gene_ids != 1)
        aux = () if batch.aux_ids is None else tuple(batch.aux_ids[i].tolist())
        out.append((tuple(batch.gene_ids[genes].tolist()), tuple(batch.counts[genes].tolist()), aux))
    return out


def make_source(root, name: str, genes: list[str], n_cells: int, cells_per_shard: int, assay: str, seed: int):
    """Shards of distinct synthetic cells: cell i expresses gene i % len(genes) and a few others."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_cells, len(genes)), dtype=np.float32)
    for i in range(n_cells):
        counts[i, rng.choice(len(genes), size=4, replace=False)] = rng.integers(1, 50, size=4)
        counts[i, i % len(genes)] = i + 1  # distinct counts: every cell is unique
    obs = pd.DataFrame({"assay": [assay] * n_cells}, index=[f"{name}{i}" for i in range(n_cells)])
    data = write_h5ad(root / f"{name}.h5ad", genes, counts, obs)
    write_shards([data], "homo_sapiens", root / name, cells_per_shard=cells_per_shard, processes=1)
    return root / name


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    genes = [f"ENSG{i:05d}" for i in range(40)]
    vocab = GeneVocab(SPECIALS + genes, SPECIALS)
    return {"a": make_source(root, "a", genes, 200, 25, "a", 0), "b": make_source(root, "b", genes, 60, 15, "b", 1),
            "vocab": vocab, "root": root}


def shard_cells(directory, vocab, tokenizer) -> dict[str, list[tuple]]:
    """Shard name -> its cells as the loader should deliver them (var order, no truncation)."""
    out = {}
    for shard in sorted(directory.glob("*.tar")):
        it = read_shard(str(shard))
        table = vocab.lookup(next(it)["genes"])
        out[str(shard)] = []
        for genes, counts, meta in it:
            ids = table[genes]
            ids, counts = tokenizer(ids[ids >= 0], counts[ids >= 0])
            out[str(shard)].append((tuple(ids.tolist()), tuple(counts.tolist()), (ASSAYS[meta["obs"]["assay"]],)))
    return out


def test_one_epoch_is_every_cell_once_tokenized_as_inference(tmp_path):
    if not MOUSE.exists():
        pytest.skip(f"real data {MOUSE} is absent (it lives in ../shared/data beside the project)")
    write_shards([MOUSE], "mus_musculus", tmp_path, cells_per_shard=250, processes=2)
    reader = CellReader(MOUSE)
    genes = list(reader.genes)
    vocab = GeneVocab(SPECIALS + genes[::3] + genes[1::3], SPECIALS)  # a third of the genes unknown
    assay = {"unknown": 0, "MERFISH": 5}
    tokenizer = Preprocessing(seq_len=48)  # most real cells are longer: truncated as the reference does

    loader = ShardLoader({"mouse": {"urls": str(tmp_path)}}, vocab, tokenizer, aux_vocabs={"assay": assay},
                         batches=BatchSpec(token_budget=1200, max_cells=24), shuffle_buffer=100, epochs=1, num_workers=2)
    batches = list(loader)
    for b in batches:
        assert b.gene_ids.dtype == torch.int64 and b.counts.dtype == torch.float32 and b.aux_ids.dtype == torch.int64
        n, length = b.gene_ids.shape
        assert n <= 24 and (n == 1 or n * (length + 1) <= 1200)
        assert length == min(int((b.gene_ids != vocab.pad).sum(1).max()) + 1, 48)
        assert float(b.counts.max()) <= 30 and (b.counts[b.gene_ids == vocab.pad] == 0).all()

    inference = CellReader(MOUSE, vocab.lookup)  # the inference path: vocabulary ids in var order
    expected = Counter()
    for _, cells in inference.iter_chunks():
        for ids, counts in cells:
            ids, counts = tokenizer(ids, counts)
            expected[(tuple(ids.tolist()), tuple(counts.tolist()), (5,))] += 1
    got = Counter(r for b in batches for r in rows(b))
    assert got == expected and sum(got.values()) == 1000
    assert loader.stats["cells"] == 1000 and loader.stats["skipped_cells"] == 0
    assert loader.state_dict()["sources"]["mouse"] == {"epoch": 1, "consumed": {}}


def test_cells_without_vocabulary_genes_are_skipped_and_counted(synthetic):
    genes = [f"ENSG{i:05d}" for i in range(40)]
    vocab = GeneVocab(SPECIALS + genes[:3], SPECIALS)
    expected = {k: [c for c in v if c[0]] for k, v in shard_cells(synthetic["b"], vocab, Preprocessing(64)).items()}
    loader = ShardLoader({"b": {"urls": str(synthetic["b"])}}, vocab, Preprocessing(64), aux_vocabs={"assay": ASSAYS},
                         epochs=1, batches=BatchSpec(max_cells=8))
    got = [r for b in loader for r in rows(b)]
    n_expected = sum(len(v) for v in expected.values())
    assert 0 < n_expected < 60 and sorted(got) == sorted(c for v in expected.values() for c in v)
    assert loader.stats["skipped_cells"] == 60 - n_expected


@pytest.mark.parametrize("weights", [(3, 1), (1, 4)])
def test_species_mixing_follows_the_weights(synthetic, weights):
    loader = ShardLoader({"a": {"urls": str(synthetic["a"]), "weight": weights[0]},
                          "b": {"urls": str(synthetic["b"]), "weight": weights[1]}},
                         synthetic["vocab"], Preprocessing(64, gene_order="random"), aux_vocabs={"assay": ASSAYS},
                         batches=BatchSpec(max_cells=32), shuffle_buffer=300, seed=weights[0])
    sources = Counter()
    for batch in loader:  # endless: source b (60 cells) goes round many times
        sources.update(batch.aux_ids[:, 0].tolist())
        if sources.total() >= 4000:
            break
    share, p = sources[1] / sources.total(), weights[0] / sum(weights)
    assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / sources.total())
    assert loader.state_dict()["sources"]["b"]["epoch"] >= 3


def test_ranks_split_the_shards(synthetic):
    vocab, tok = synthetic["vocab"], Preprocessing(64)
    expected = sorted(c for v in shard_cells(synthetic["a"], vocab, tok).values() for c in v)
    per_rank = [[r for b in ShardLoader({"a": {"urls": str(synthetic["a"])}}, vocab, tok, aux_vocabs={"assay": ASSAYS},
                                        epochs=1, rank=rank, world_size=2) for r in rows(b)]
                for rank in (0, 1)]
    assert len(per_rank[0]) == len(per_rank[1]) == 100 and sorted(per_rank[0] + per_rank[1]) == expected


def test_packed_batches_hold_every_cell_once_in_rows_of_one_shape(synthetic):
    vocab, tok = synthetic["vocab"], Preprocessing(64, gene_order="random")
    expected = sorted(c for v in shard_cells(synthetic["a"], vocab, Preprocessing(64)).values() for c in v)
    loader = ShardLoader({"a": {"urls": str(synthetic["a"])}}, vocab, tok, aux_vocabs={"assay": ASSAYS},
                         batches=BatchSpec(token_budget=400, pack_row_len=100), batch_window=64, epochs=1, seed=3)
    batches = list(loader)
    got = [r for b in batches for r in rows(b)]
    # random gene order: compare each cell's (gene, count) pairs
    assert sorted(tuple(sorted(zip(g, c))) for g, c, _ in got) == sorted(tuple(sorted(zip(g, c))) for g, c, _ in expected)
    assert sorted(a for _, _, a in got) == sorted(a for _, _, a in expected)
    assert all(tuple(b.gene_ids.shape) == (4, 100) for b in batches)
    cells_per_row = [len(set(row.tolist()) - {-1}) for b in batches for row in b.cell_ids]
    assert max(cells_per_row) > 1 and loader.stats["cells"] == 200
    useful = sum(int((b.cell_ids >= 0).sum()) for b in batches) / sum(b.cell_ids.numel() for b in batches)
    assert useful > 0.8  # the rows are filled, not one cell each
    with pytest.raises(InputError, match="at least 65"):
        ShardLoader({"a": {"urls": str(synthetic["a"])}}, vocab, tok, aux_vocabs={"assay": ASSAYS}, batches=BatchSpec(pack_row_len=64))


@pytest.mark.parametrize("workers,pack_row_len", [(0, 0), (2, 0), (0, 130)])
def test_resumption_continues_at_the_exact_batch(synthetic, workers, pack_row_len):
    vocab, tok = synthetic["vocab"], Preprocessing(64, gene_order="random")

    def loader():
        return ShardLoader({"a": {"urls": str(synthetic["a"])}}, vocab, tok, aux_vocabs={"assay": ASSAYS},
                           shuffle_buffer=30, batch_window=20, epochs=2, seed=5, num_workers=workers,
                           batches=BatchSpec(260 if pack_row_len else 16384, 10, pack_row_len))

    uninterrupted = [rows(b) for b in loader()]
    first, seen = loader(), []
    for batch in first:
        seen.append(rows(batch))
        if len(seen) == 7:
            break  # "the checkpoint", in the middle of a shard
    state = json.loads(json.dumps(first.state_dict()))
    resumed = loader()
    resumed.load_state_dict(state)
    rest = [rows(b) for b in resumed]
    assert seen + rest == uninterrupted  # the same batches, in the same order, each once
    assert resumed.state_dict()["sources"]["a"] == {"epoch": 2, "consumed": {}}
    assert resumed.state_dict()["replay"]["batches"] == len(uninterrupted)

    other = ShardLoader({"a": {"urls": str(synthetic["a"])}}, vocab, tok, rank=0, world_size=2)
    with pytest.raises(InputError, match="same ones"):
        other.load_state_dict(state)


def test_corrupt_shards_are_named_and_handled_by_policy(synthetic, tmp_path, caplog):
    vocab, tok = synthetic["vocab"], Preprocessing(64)
    shutil.copytree(synthetic["a"], tmp_path / "a")
    shards = sorted((tmp_path / "a").glob("*.tar"))
    by_shard = shard_cells(tmp_path / "a", vocab, tok)
    truncated, damaged = shards[2], shards[5]
    truncated.write_bytes(truncated.read_bytes()[:9000])  # ends silently for a tar reader
    data = bytearray(damaged.read_bytes())
    data[12000:12600] = b"\x07" * 600  # a damaged member header mid-shard
    damaged.write_bytes(bytes(data))
    source = {"a": {"urls": str(tmp_path / "a")}}

    with pytest.raises(ShardError, match=r"shard-00000[25]\.tar.*on_corrupt='skip'"):
        list(ShardLoader(source, vocab, tok, epochs=1))

    loader = ShardLoader(source, vocab, tok, aux_vocabs={"assay": ASSAYS}, epochs=1, on_corrupt="skip",
                         max_corrupt_share=3 / 8)
    missing = str(shards[6])
    shards[6].unlink()  # a shard that vanished after the loader listed it
    with caplog.at_level(logging.WARNING):
        got = [r for b in loader for r in rows(b)]
    bad = {str(truncated), str(damaged), missing}
    assert sorted(loader.stats["corrupt_shards"]) == sorted(bad)
    for name in bad:
        assert name in caplog.text
    intact = [c for shard, cells in by_shard.items() if shard not in bad for c in cells]
    assert set(intact) <= set(got) and len(intact) < len(got) < 200  # cells before the damage are kept
    assert loader.state_dict()["sources"]["a"]["epoch"] == 1  # skipped shards count as consumed
    # more corrupt shards than the share allowed: the run stops, naming the source
    with pytest.raises(ShardError, match=r"source a: 3 of its 8 shards are corrupt .* max_corrupt_share=0.25"):
        list(ShardLoader(source, vocab, tok, epochs=1, on_corrupt="skip", max_corrupt_share=0.25))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_source_with_no_readable_shard_ends_the_stream(synthetic, tmp_path, workers):
    for i in range(4):
        (tmp_path / f"shard-{i:06d}.tar").write_bytes(os.urandom(3000))
    loader = ShardLoader({"junk": {"urls": str(tmp_path)}}, synthetic["vocab"], Preprocessing(64), on_corrupt="skip",
                         max_corrupt_share=1.0, num_workers=workers)  # endless: would loop forever
    with pytest.raises(ShardError, match=r"^source junk: none of its \d shards .* gave a cell"):
        next(iter(loader))


def test_webdataset_urls_globs_and_manifests(synthetic):
    vocab, tok, directory = synthetic["vocab"], Preprocessing(64), synthetic["b"]
    expected = sorted(c for v in shard_cells(directory, vocab, tok).values() for c in v)
    for urls in [f"pipe:cat {directory}/shard-{{000000..000003}}.tar", f"{directory}/*.tar",
                 f"file://{directory}/manifest.json"]:
        loader = ShardLoader({"b": {"urls": urls}}, vocab, tok, aux_vocabs={"assay": ASSAYS}, epochs=1)
        assert sorted(r for b in loader for r in rows(b)) == expected, urls
    with pytest.raises(ShardError, match="pipe:false"):
        list(ShardLoader({"b": {"urls": ["pipe:false"]}}, vocab, tok, epochs=1))
    with pytest.raises(InputError, match="nothing: no such shard"):
        ShardLoader({"b": {"urls": str(synthetic["root"] / "nothing")}}, vocab, tok)
    with pytest.raises(InputError, match="holds no shard"):
        ShardLoader({"b": {"urls": str(synthetic["root"] / "*.tgz")}}, vocab, tok)


@pytest.mark.parametrize("pack_row_len", [0, 130])
def test_labels_follow_their_cells_from_shard_metadata(tmp_path, pack_row_len):
    """Fine-tuning labels come from each cell's shard metadata and stay with that cell through
    shuffling, planning and packing: here a cell's label is its own total count."""
    rng = np.random.default_rng(5)
    genes = [f"ENSG{i:05d}" for i in range(40)]
    counts = (rng.random((90, 40)) < 0.2) * rng.integers(1, 50, (90, 40)).astype(np.float32)
    counts[:, 0] += np.arange(1, 91)  # every cell's total differs
    obs = pd.DataFrame({"total": counts.sum(1).astype(int).astype(str)}, index=[f"c{i}" for i in range(90)])
    write_shards([write_h5ad(tmp_path / "t.h5ad", genes, counts, obs)], "homo_sapiens", tmp_path / "s",
                 cells_per_shard=15, obs_keys=["total"], processes=1)
    classes = manifest_classes(str(tmp_path / "s"), "total")  # recorded by tfx shard, no cell decoded
    assert classes == sorted(set(obs["total"]))
    loader = ShardLoader({"s": {"urls": str(tmp_path / "s")}}, GeneVocab(SPECIALS + genes, SPECIALS),
                         Preprocessing(64, clip_counts=None), BatchSpec(260, pack_row_len=pack_row_len), epochs=1,
                         seed=2, labels=LabelCodec("total", classes))
    seen = 0
    for batch in loader:
        for (_, cell_counts, _), label in zip(rows(batch), batch.labels.tolist()):
            assert sum(cell_counts) == float(classes[label])
            seen += 1
    assert seen == 90
