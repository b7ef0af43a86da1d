"""Training batches streamed from tfx shards, mixing species (or datasets) by weight.

    loader = ShardLoader(
        {"human": {"urls": "/data/shards/human", "weight": 3},
         "mouse": {"urls": "s3://bucket/shards/mouse", "weight": 1}},
        vocab, Preprocessing(seq_len=2047, gene_order="random"), BatchSpec(token_budget=16384, max_cells=256),
        aux_vocabs={"assay": {...}}, shuffle_buffer=2000, seed=0, num_workers=4)
    for batch in loader: ...                 # tfx.tokenize.TokenBatch, padded to the batch's longest cell
    ShardLoader(..., BatchSpec(pack_row_len=2048))  # or packed: token_budget // 2048 rows of whole cells a batch
    state = loader.state_dict()              # shards consumed so far (this rank)
    loader.load_state_dict(state)            # a resumed run skips them

A source's ``urls`` is a directory (its manifest.json, else its *.tar), a glob, a manifest path, an
fsspec URL (``s3://bucket/prefix``, ``gs://``, ``https://``: its manifest.json, else its *.tar; read
through fsspec, no shell command; see ``tfx.data.store``), or anything webdataset opens: brace
patterns, ``pipe:``. A manifest names plain .tar files beside it, resolved in the same directory or
store prefix; any other entry (a path, a URL, a command) is refused. Per rank and
data-loader worker the pipeline is: each source's shards in a seeded per-epoch order, split across
ranks then workers (every rank computes the same order) -> cells mapped to the vocabulary through
each shard's gene table and tokenized -> weighted mixing of the sources, one draw per cell ->
shuffle buffer -> windows of cells cut into batches under a token budget (longest first), or with
``pack_row_len`` packed first-fit-decreasing into rows of that many positions, ``token_budget //
pack_row_len`` rows a batch (every batch one shape; see ``tfx.tokenize.packing``).

Epochs are per source: ``epochs=None`` streams forever (train by steps; the weights then hold
exactly), ``epochs=n`` makes one iteration read every source n times over (a source that runs out
drops out of the mix). A shard counts as consumed once every one of its cells went out in a batch
(or was skipped); ``state_dict`` records those per source and epoch, and a loader given that state
resumes in the same epoch without them. Cells in flight at the checkpoint come again with their
shard (a trainer that fetches a batch ahead may lose that one batch's cells instead). Resuming
needs the same seed, rank and world size.

Cells with no gene in the vocabulary, and cells without a label that ``labels`` drops, are skipped and
counted (``stats["skipped_cells"]``). A shard
that cannot be opened, does not decode, or holds fewer cells than its header says (tar readers stop
silently at a truncation) raises ``ShardError`` naming it, or with ``on_corrupt="skip"`` is logged by
name, counted and left (cells read before the damage are kept).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds

from tfx.data.labels import LabelCodec, missing
from tfx.data import store
from tfx.data.shards import MANIFEST, ShardError, read_shard
from tfx.data.store import is_url
from tfx.errors import InputError
from tfx.tokenize import Preprocessing, TokenBatch
from tfx.tokenize.batches import BatchPlanner, BatchSpec
from tfx.vocab import GeneVocab
from tfx.vocab.aux import aux_token_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSource:
    name: str
    urls: str | list[str]
    weight: float = 1.0


def resolve_urls(spec: str | list[str]) -> list[str]:
    """The shard URLs a source names (see the module docstring)."""
    if not isinstance(spec, str):
        return [url for part in spec for url in resolve_urls(part)]
    if is_url(spec) and "{" not in spec:
        return _resolve_store(spec)
    if spec.endswith(".json"):
        try:
            with wds.gopen(spec) as f:
                names = _manifest(f.read(), spec)
        except OSError as err:
            raise InputError(f"{spec}: not a readable shard manifest ({type(err).__name__}: {err}); "
                             "re-write the shards with tfx shard") from None
        base = spec.rsplit("/", 1)[0] + "/" if "/" in spec else ""
        return [base + _manifest_entry(name, spec) for name in names]
    if os.path.isdir(spec):
        if os.path.exists(os.path.join(spec, MANIFEST)):
            return resolve_urls(os.path.join(spec, MANIFEST))
        return sorted(glob.glob(os.path.join(spec, "*.tar")))
    if "://" not in spec and not spec.startswith("pipe:"):
        if glob.has_magic(spec):
            return sorted(glob.glob(spec))
        if "{" not in spec and not os.path.exists(spec):
            raise InputError(f"{spec}: no such shard, directory or manifest; check the source's urls")
    return wds.shardlists.expand_urls(spec)


def _resolve_store(spec: str) -> list[str]:
    """An object-store URL (fsspec): a manifest, a prefix holding one (else its *.tar), or one shard.
    A manifest's entries resolve beside it, within the same store and prefix."""
    manifest = spec if spec.endswith(".json") else store.join(spec, MANIFEST)
    if spec.endswith(".json") or store.kind(manifest) == "file":
        names = _manifest(store.read_bytes(manifest), manifest)
        base = manifest.rsplit("/", 1)[0]
        return [store.join(base, _manifest_entry(name, manifest)) for name in names]
    found = store.kind(spec)
    if found == "dir":
        return store.glob_urls(spec, "*.tar")
    if found == "file":
        return [spec]
    raise InputError(f"{spec}: no such shard, prefix or manifest on the store; check the source's urls")


def _manifest(data: bytes, where: str) -> list:
    try:
        return [s["name"] for s in json.loads(data)["shards"]]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{where}: not a readable shard manifest ({type(err).__name__}: {err}); "
                         "re-write the shards with tfx shard") from None


def _manifest_record(spec: str, field: str) -> dict:
    """The manifest's ``field`` ({obs key: ...}) where ``spec`` names a manifest or a directory
    holding one; {} without a manifest or the field."""
    if is_url(spec):
        path = spec if spec.endswith(".json") else store.join(spec, MANIFEST)
        data = store.read_bytes(path) if spec.endswith(".json") or store.kind(path) == "file" else None
    else:
        path = spec if spec.endswith(".json") else os.path.join(spec, MANIFEST)
        data = None
        if spec.endswith(".json") or os.path.exists(path):
            try:
                with wds.gopen(path) as f:
                    data = f.read()
            except OSError as err:
                raise InputError(f"{path}: not a readable shard manifest ({type(err).__name__}); "
                                 "re-write the shards with tfx shard") from None
    if data is None:
        return {}
    try:
        record = json.loads(data).get(field, {})
    except (ValueError, AttributeError) as err:
        raise InputError(f"{path}: not a readable shard manifest ({type(err).__name__}); "
                         "re-write the shards with tfx shard") from None
    return record if isinstance(record, dict) else {}


def manifest_classes(spec: str | list[str], key: str) -> list[str]:
    """The classes of obs ``key`` that ``tfx shard`` recorded in the manifests a source names."""
    if not isinstance(spec, str):
        return sorted({c for part in spec for c in manifest_classes(part, key)})
    values = _manifest_record(spec, "obs_values").get(key)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise InputError(f"{spec}: no manifest lists the values of obs '{key}'; re-write the shards with "
                         f"tfx shard --obs-keys {key}, or name the classes (task.classes=[A,B,...])")
    return values


def manifest_missing(spec: str | list[str], key: str) -> int | None:
    """How many cells of a source have no value of obs ``key``, as ``tfx shard`` counted them; None
    where no manifest counts them (shards written before the count, or named one by one)."""
    counts = [manifest_missing(part, key) for part in spec] if not isinstance(spec, str) else \
        [_manifest_record(spec, "obs_missing").get(key)]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
        return None
    return sum(counts)


def _manifest_entry(name, manifest: str) -> str:
    """A manifest names files beside it, nothing else: a URL or ``pipe:`` command in a received
    manifest would be fetched or run (those come only from the command line or a recipe)."""
    if (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*", name)
            or not name.endswith(".tar")):
        raise InputError(f"{manifest}: shard entry {name!r} is not a plain .tar file name beside the manifest; "
                         "refused (re-write the shards with tfx shard, or name URLs in the recipe)")
    return name


def epoch_order(urls: list[str], seed: int, source: str, epoch: int) -> list[str]:
    """The same shuffled order on every rank."""
    order = list(urls)
    random.Random(f"{seed}/{source}/{epoch}").shuffle(order)
    return order


class _Progress:
    """Per worker: which shards had every cell delivered in a batch (or skipped), and counters."""

    def __init__(self):
        self.reading: set[tuple] = set()
        self.pending: Counter = Counter()
        self.done: list[tuple] = []
        self.skipped = 0
        self.corrupt: list[str] = []

    def open(self, shard):
        self.reading.add(shard)

    def finish(self, shard):
        self.reading.discard(shard)
        self._check(shard)

    def deliver(self, shards):
        for shard in shards:
            self.pending[shard] -= 1
            self._check(shard)

    def _check(self, shard):
        if shard not in self.reading and self.pending[shard] <= 0:
            del self.pending[shard]
            self.done.append(shard)

    def report(self) -> dict:
        info = {"done": self.done, "skipped_cells": self.skipped, "corrupt_shards": self.corrupt}
        self.done, self.skipped, self.corrupt = [], 0, []
        return info


class _CellStream(torch.utils.data.IterableDataset):
    """One rank's (or DataLoader worker's) pipeline, yielding (TokenBatch or None, progress report)."""

    def __init__(self, loader: ShardLoader, start_epochs: dict[str, int], consumed: dict[str, dict[int, set]]):
        self.loader, self.start_epochs, self.consumed = loader, start_epochs, consumed

    def __iter__(self):
        ld = self.loader
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        entropy = [ld.seed, ld.rank, worker, *self.start_epochs.values(),
                   sum(len(c) for per_epoch in self.consumed.values() for c in per_epoch.values())]
        rng = np.random.default_rng(entropy)
        progress = _Progress()
        streams = [self._source_cells(src, worker, workers, progress, rng) for src in ld.sources]
        cells = _mix(streams, [src.weight for src in ld.sources], rng)
        if ld.shuffle_buffer > 1:
            cells = wds.shuffle(ld.shuffle_buffer, ld.shuffle_buffer, rng=random.Random(int(rng.integers(2**63))))(cells)
        yield from self._batches(cells, progress, rng)

    def _source_cells(self, src: ShardSource, worker: int, workers: int, progress: _Progress, rng):
        ld = self.loader
        first = self.start_epochs[src.name]
        epoch = first
        while ld.epochs is None or epoch < first + ld.epochs:
            consumed = self.consumed[src.name].get(epoch, set())
            todo = [u for u in ld.rank_shards(src, epoch) if u not in consumed][worker::workers]
            used = 0
            for url in todo:
                used += yield from self._shard_cells((src.name, epoch, url), progress, rng)
            if todo and not used:  # a pass that gave no cell: every later one would loop forever
                raise ShardError(f"source {src.name}: none of its {len(todo)} shards (e.g. {todo[0]}) gave a cell "
                                 "with a gene of the vocabulary (corrupt shards are logged above); check the "
                                 "source's urls and the vocabulary's species")
            epoch += 1

    def _shard_cells(self, shard: tuple, progress: _Progress, rng):
        """Yield the shard's cells; return how many."""
        ld, url = self.loader, shard[2]
        progress.open(shard)
        read = used = 0
        try:
            cells = read_shard(url)
            table = ld.vocab.lookup(next(cells)["genes"])  # the shard's gene table -> vocabulary ids
            for genes, counts, meta in cells:
                read += 1
                ids = table[genes]
                keep = ids >= 0
                label = ld.label(meta, url) if keep.any() else None
                if label is None and (ld.labels is not None or not keep.any()):  # no gene, or a dropped label
                    progress.skipped += 1
                    continue
                ids, counts = ld.preprocessing(ids[keep], counts[keep], rng)
                progress.pending[shard] += 1
                used += 1
                yield shard, ids, counts, ld.aux_ids(meta), label
        except ShardError as err:
            if ld.on_corrupt == "raise":
                raise ShardError(f"{err}; re-write the shard with tfx shard, or pass on_corrupt='skip' "
                                 "to skip such shards") from err
            log.warning("%s (skipped after %d cells, on_corrupt='skip')", err, read)
            progress.corrupt.append(url)
        progress.finish(shard)
        return used

    def _batches(self, cells, progress: _Progress, rng):
        """Windows of cells cut into batches, yielded in random order; the window's last batch (the
        shortest cells, often part-filled) waits for the next window."""
        window = []
        for cell in cells:
            window.append(cell)
            if len(window) >= self.loader.batch_window:
                plans = self._plan(window)
                carry = plans.pop() if len(plans) > 1 else []
                for g in rng.permutation(len(plans)):
                    yield self._emit(window, plans[g], progress)
                window = [window[i] for row in carry for i in row]
        for plan in self._plan(window):
            yield self._emit(window, plan, progress)
        yield None, progress.report()  # what finished after the last batch (skipped cells, corrupt shards)

    def _plan(self, window) -> list[list[np.ndarray]]:
        return self.loader.planner.plan([len(c[1]) for c in window])

    def _emit(self, window, plan: list[np.ndarray], progress: _Progress):
        ld = self.loader
        aux = np.array([c[3] for c in window], dtype=np.int64) if ld.aux_vocabs else None
        labels = np.array([c[4] for c in window]) if ld.labels is not None else None
        batch, idx = ld.planner.emit(plan, lambda i: (window[i][1], window[i][2]), aux, ld.vocab.pad, labels)
        progress.deliver([window[i][0] for i in idx])
        return batch, progress.report()


def _mix(streams: list[Iterator], weights: list[float], rng, block: int = 256):
    """One weighted draw of a source per cell; exhausted sources leave, the rest keep their ratios."""
    live = list(range(len(streams)))
    weights = np.asarray(weights, dtype=np.float64)
    while live:
        p = weights[live] / weights[live].sum()
        for i in rng.choice(live, size=block, p=p):
            try:
                yield next(streams[i])
            except StopIteration:
                live.remove(i)
                break


def _identity(item):
    return item


class ShardLoader:
    """Streams TokenBatches from weighted shard sources; see the module docstring."""

    def __init__(self, sources: Mapping[str, Mapping] | list[ShardSource], vocab: GeneVocab,
                 preprocessing: Preprocessing, batches: BatchSpec = BatchSpec(), *,
                 aux_vocabs: Mapping[str, Mapping[str, int]] | None = None, labels: LabelCodec | None = None,
                 shuffle_buffer: int = 2000, batch_window: int | None = None, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, num_workers: int = 0,
                 epochs: int | None = None, on_corrupt: str = "raise", max_corrupt_share: float = 0.1):
        if isinstance(sources, Mapping):
            sources = [ShardSource(name, spec["urls"], float(spec.get("weight", 1.0))) for name, spec in sources.items()]
        if not sources:
            raise InputError("the loader has no shard source; name at least one")
        if on_corrupt not in ("raise", "skip"):
            raise InputError(f"on_corrupt={on_corrupt!r}: choose 'raise' or 'skip'")
        if not 0 <= max_corrupt_share <= 1:
            raise InputError(f"max_corrupt_share={max_corrupt_share}: must be a share between 0 and 1")
        if rank is None or world_size is None:
            rank, world_size = wds.utils.pytorch_worker_info()[:2]
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        readers = world_size * max(1, num_workers)
        self.sources, self.urls = [], {}
        for src in sources:
            if src.weight <= 0:
                raise InputError(f"source {src.name}: weight {src.weight} must be positive")
            urls = list(dict.fromkeys(resolve_urls(src.urls)))  # a shard listed twice is read once
            if not urls:
                raise InputError(f"source {src.name}: {src.urls} holds no shard; write some with tfx shard")
            if len(urls) < readers:
                raise InputError(f"source {src.name}: {len(urls)} shards in {src.urls} for {world_size} ranks x "
                                 f"{max(1, num_workers)} workers; write more, smaller shards (--cells-per-shard) "
                                 "or use fewer workers")
            self.sources.append(src)
            self.urls[src.name] = urls
        self.vocab, self.preprocessing = vocab, preprocessing
        self.aux_vocabs = dict(aux_vocabs or {})
        self.shuffle_buffer = shuffle_buffer
        self.batch_window = batch_window or 8 * batches.max_cells
        self.planner = BatchPlanner(preprocessing.seq_len, len(self.aux_vocabs), batches)
        self.labels = labels
        self.seed, self.epochs, self.on_corrupt, self.max_corrupt_share = seed, epochs, on_corrupt, max_corrupt_share
        self.epoch = {src.name: 0 for src in self.sources}  # the first epoch not yet wholly consumed
        self.consumed: dict[str, dict[int, set[str]]] = {src.name: {} for src in self.sources}
        self.stats = {"batches": 0, "cells": 0, "skipped_cells": 0, "corrupt_shards": []}
        self._corrupt = {src.name: set() for src in self.sources}
        # exact resume: the shard state this pass started from, and how many of its batches to replay unseen
        self._base, self._skip, self._pass_skip, self._yielded = None, 0, 0, 0

    def rank_shards(self, src: ShardSource, epoch: int) -> list[str]:
        return epoch_order(self.urls[src.name], self.seed, src.name, epoch)[self.rank :: self.world_size]

    def aux_ids(self, meta: dict) -> list[int]:
        if not self.aux_vocabs:
            return []
        obs = meta.get("obs", {})
        return aux_token_ids(self.aux_vocabs, {col: [obs.get(col)] for col in self.aux_vocabs}, 1)[0].tolist()

    def label(self, meta: dict, url: str):
        """The cell's encoded label (``LabelCodec``); None without a task, or for a cell without a
        value that the codec drops."""
        if self.labels is None:
            return None
        obs = meta.get("obs", {})
        if self.labels.key not in obs:
            raise InputError(f"{url}: a cell has no obs '{self.labels.key}'; re-write the shards with "
                             f"tfx shard --obs-keys {self.labels.key}")
        value = obs[self.labels.key]
        if self.labels.drop_missing and missing([value])[0]:
            return None
        return self.labels.encode([value], url)[0]

    def __iter__(self) -> Iterator[TokenBatch]:
        self._base, self._yielded = self._shard_state(), 0
        self._pass_skip, self._skip = self._skip, 0
        stream = _CellStream(self, dict(self.epoch), {k: {e: set(u) for e, u in v.items()} for k, v in self.consumed.items()})
        if self.num_workers > 0:
            stream = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=self.num_workers,
                                                 collate_fn=_identity)
        try:
            yield from self._yield(stream)
        except InputError as err:  # from a worker process, its traceback is in the message: keep the last line
            if "Original Traceback" not in str(err):
                raise
            raise type(err)(str(err).rstrip().splitlines()[-1].split(": ", 1)[-1]) from None

    def _yield(self, stream):
        replayed = 0
        for batch, report in stream:
            self._account(report)
            if batch is None:
                continue
            if replayed < self._pass_skip:  # a resumed pass: the interrupted run trained on these
                replayed += 1
                continue
            self._yielded += 1
            self.stats["batches"] += 1
            self.stats["cells"] += batch.n_cells
            yield batch

    def _account(self, report: dict) -> None:
        self.stats["skipped_cells"] += report["skipped_cells"]
        self.stats["corrupt_shards"] += report["corrupt_shards"]
        for url in report["corrupt_shards"]:
            name = next(n for n, urls in self.urls.items() if url in urls)
            self._corrupt[name].add(url)
            n, limit = len(self._corrupt[name]), self.max_corrupt_share * len(self.urls[name])
            if n > limit:
                raise ShardError(f"source {name}: {n} of its {len(self.urls[name])} shards are corrupt (e.g. {url}), "
                                 f"more than max_corrupt_share={self.max_corrupt_share}; re-write them with tfx shard "
                                 "(or raise data.max_corrupt_share)")
        for name, epoch, url in report["done"]:
            self.consumed[name].setdefault(epoch, set()).add(url)
        for src in self.sources:  # forget epochs this rank has wholly consumed
            per_epoch, name = self.consumed[src.name], src.name
            rank_total = len(range(self.rank, len(self.urls[name]), self.world_size))
            while len(per_epoch.get(self.epoch[name], ())) == rank_total:
                del per_epoch[self.epoch[name]]
                self.epoch[name] += 1

    def _shard_state(self) -> dict:
        return {name: {"epoch": self.epoch[name], "consumed": {str(e): sorted(u) for e, u in self.consumed[name].items()}}
                for name in self.epoch}

    def state_dict(self, batches: int | None = None) -> dict:
        """``sources``: the shards consumed so far; ``replay``: the state this pass started from and
        how many of its batches were used, ``batches`` (default: every batch yielded; a trainer that
        fetches ahead passes the number it trained on)."""
        used = self._pass_skip + self._yielded if batches is None else batches
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size, "sources": self._shard_state(),
                "replay": {"sources": self._base or self._shard_state(), "batches": int(used)}}

    def load_state_dict(self, state: dict) -> None:
        """Resume at the exact batch: the next pass starts from ``replay``'s shard state and skips
        the batches already used (read again, not yielded: same seed, same batches)."""
        saved = (state["seed"], state["rank"], state["world_size"])
        if saved != (self.seed, self.rank, self.world_size):
            raise InputError(f"loader state saved with seed, rank, world size {saved}, this loader has "
                             f"{(self.seed, self.rank, self.world_size)}; resume with the same ones")
        replay = state.get("replay", {"sources": state["sources"], "batches": 0})
        self._skip = int(replay["batches"])
        for name, s in replay["sources"].items():
            if name not in self.epoch:
                raise InputError(f"loader state names source {name}, which this loader lacks; keep the sources")
            self.epoch[name] = int(s["epoch"])
            self.consumed[name] = {int(e): set(u) for e, u in s["consumed"].items()}
