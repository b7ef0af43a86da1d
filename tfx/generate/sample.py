"""Sampling cells from a checkpoint: ancestral, one position at a time, with a key/value cache.

At each position a gene is drawn from the gene-id head (restricted to what the order allows,
renormalised, with temperature and top-k), then its count from the checkpoint's likelihood; the
pair is read back as the next position's input. [END], or the last position seq_len allows,
ends a cell. Each cell's ``log_prob`` is exact under the distribution actually sampled.

A var-order prompt forces its genes in, so those cells are not draws from the model given the
prompt: each carries ``log_weight``, log p(cell) - log q(cell) with p the model's own var-order
sampler (no prompt) and q the prompted one, the prompt genes' counts scored by p. Self-normalised,
the weights turn averages over the cells into expectations under p given the prompt genes (with
their counts) in the cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tfx.checkpoint import Checkpoint
from tfx.data import MAX_COUNT
from tfx.data.preprocess import preprocessing
from tfx.errors import ConfigError, InputError
from tfx.model.likelihoods import log_expm1
from tfx.progress import progress
from tfx.vocab.aux import aux_token_ids
from tfx.vocab.species import species_for_file



@dataclass
class Prompt:
    """Genes every cell starts with (vocabulary ids and counts), read before anything is sampled."""

    ids: list[int] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)


@dataclass
class Species:
    """A species of the checkpoint's vocabulary: its genes' vocabulary ids in file (= var) order."""

    name: str
    genes: list[str]
    ids: np.ndarray

    def mask(self, vocab_size: int, device) -> Tensor:
        m = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        m[torch.as_tensor(self.ids, device=device)] = True
        return m


def species_of(ckpt: Checkpoint, name: str) -> Species:
    for file_name, genes in ckpt.vocab.files:
        if species_for_file(file_name) == name:
            return Species(name, list(genes), np.array([ckpt.vocab.index[g] for g in genes], dtype=np.int64))
    known = ", ".join(species_for_file(f) for f, _ in ckpt.vocab.files)
    raise InputError(f"--species {name}: not in checkpoint {ckpt.path}'s vocabulary (it has {known}); "
                     "add it with tfx add-species")


def parse_prompt(ckpt: Checkpoint, species: Species, text: str | None) -> Prompt:
    """'GENE[:COUNT],...' (count 1 when left out) -> vocabulary ids in the species."""
    prompt = parse_genes(ckpt, species, text, "--prompt", counts=True)
    check_prompt_length(ckpt, len(prompt.ids), "--prompt")
    return prompt


def parse_genes(ckpt: Checkpoint, species: Species, text: str | None, option: str, counts: bool = False) -> Prompt:
    """'GENE,...' (with ``counts``: 'GENE[:COUNT],...', count 1 when left out) -> vocabulary ids in
    the species; ``option`` names the option in errors."""
    prompt = Prompt()
    in_species = set(species.genes)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        gene, colon, count = item.strip().partition(":")
        if colon and not counts:
            raise InputError(f"{option}: '{item.strip()}' gives a count; {option} lists genes only (G1,G2,...)")
        if not gene:
            raise InputError(f"{option}: '{item.strip()}' names no gene; write GENE:COUNT")
        if gene not in in_species:
            others = [species_for_file(f) for f, genes in ckpt.vocab.files if gene in genes]
            where = f"it is a gene of {', '.join(others)}" if others else "no species of this checkpoint has it"
            raise InputError(f"{option}: gene {gene} is not in species {species.name}'s vocabulary ({where})")
        try:
            value = float(count) if colon else 1.0  # 'G:' names no count
        except ValueError:
            raise InputError(f"{option}: count '{count}' of gene {gene} is not a number; write GENE:COUNT") from None
        if not 1 <= value <= MAX_COUNT:  # NaN fails too
            raise InputError(f"{option}: count {count} of gene {gene} is not a count from 1 to {MAX_COUNT:.0e}; "
                             "expressed genes have raw counts >= 1")
        prompt.ids.append(ckpt.vocab.index[gene])
        prompt.counts.append(value)
    if len(set(prompt.ids)) < len(prompt.ids):
        raise InputError(f"{option}: a gene is listed twice; list each gene once")
    return prompt


def check_prompt_length(ckpt: Checkpoint, n: int, option: str) -> None:
    """A prompt leaves room for what follows it: at most seq_len - 1 genes (the last position predicts [END])."""
    limit = ckpt.model_cfg.seq_len - 1
    if n > limit:
        raise InputError(f"{option}: {n} genes, more than the {limit} a cell of this checkpoint may have "
                         f"(seq_len {ckpt.model_cfg.seq_len}); give fewer")


def require_gene_head(ckpt: Checkpoint) -> None:
    if not ckpt.model.has_gene_head:
        raise ConfigError(f"checkpoint {ckpt.path} has no gene-id head (gene_id_loss_weight 0): it cannot "
                          "choose genes, so it cannot generate or answer prompts")


def aux_ids(ckpt: Checkpoint, assay: str | None, n: int) -> np.ndarray | None:
    """[n, aux columns] the aux tokens of n cells of ``assay`` (unknown when not given), as a file's
    cells get theirs; None for a model without."""
    if not ckpt.aux_vocabs:
        if assay:
            raise InputError(f"--assay {assay}: checkpoint {ckpt.path} has no assay token; leave --assay out")
        return None
    vocab = ckpt.aux_vocabs.get("assay", {})
    if assay and assay not in vocab:
        raise InputError(f"--assay {assay}: not in the checkpoint's assay vocabulary "
                         f"({', '.join(sorted(a for a in vocab if a != 'unknown'))})")
    return aux_token_ids(ckpt.aux_vocabs, {"assay": [assay] * n} if assay else {}, n)


def aux_tensor(ckpt: Checkpoint, assay: str | None, n: int, device) -> Tensor | None:
    aux = aux_ids(ckpt, assay, n)
    return None if aux is None else torch.as_tensor(aux, device=device)


def allowed_next(in_species: Tensor, drawn: Tensor, last: Tensor, n_read: int, order: str, limit: int,
                 end: int, due: Tensor | None = None) -> Tensor:
    """[B, V] the genes a cell may take next: the species' genes not drawn yet (``var``: only those
    after the last drawn gene in vocabulary order), and [END]; only [END] once ``limit`` genes
    are read. ``drawn`` [B, V] bool, ``last`` [B] the last gene's id (-1 before any).

    ``due`` [B] (``var`` with a prompt): the next prompt gene each cell must still contain (-1:
    none), so only it and the genes before it are allowed, and no [END].
    """
    allowed = in_species[None] & ~drawn
    if order == "var":
        ids = torch.arange(in_species.shape[0], device=drawn.device)[None]
        allowed &= ids > last[:, None]
        if due is not None:
            allowed &= (due[:, None] < 0) | (ids <= due[:, None])
    if n_read >= limit:
        allowed[:] = False
    allowed[:, end] = True if due is None else due < 0
    return allowed


def restrict(logits: Tensor, allowed: Tensor, temperature: float, top_k: int | None) -> Tensor:
    """Log-probabilities of the distribution actually sampled: allowed genes only, logits / T,
    the top k kept (ties at the k-th value all kept), renormalised."""
    logits = logits.masked_fill(~allowed, float("-inf"))
    # shifted to a maximum of 0, so that a tiny temperature (0 in float32) leaves the likeliest genes
    # at 0 and the others at -inf: the argmax, never inf - inf or 0 / 0
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    logits = torch.where(shifted == 0, 0.0, shifted / temperature)
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def sample_ztp(rate: Tensor, generator: torch.Generator) -> Tensor:
    """Zero-truncated Poisson draws: the first arrival of a unit Poisson process conditioned to
    come before ``rate``, plus a Poisson number of arrivals after it (exact)."""
    u = torch.rand(rate.shape, generator=generator, device=rate.device)
    first = -torch.log1p(-u * -torch.expm1(-rate))  # truncated exponential on (0, rate)
    return 1 + torch.poisson((rate - first).clamp(min=0), generator=generator)


def ztp_log_prob(counts: Tensor, rate: Tensor) -> Tensor:
    """log ZTP(count | rate) with the exact normaliser."""
    return counts * torch.log(rate) - log_expm1(rate, softplus_approx=False) - torch.lgamma(counts + 1)


@dataclass
class Sampled:
    """A batch of sampled cells, each as genes in generation order."""

    genes: list[np.ndarray]  # vocabulary ids
    counts: list[np.ndarray]  # raw counts, as drawn
    log_prob: np.ndarray  # [cells] float64 of what was sampled (a prompt gene's count is given, not sampled)
    ended: np.ndarray  # [cells] bool: [END] was drawn (else the length limit ended the cell, log p 0)
    inclusion: np.ndarray | None = None  # [cells, V] each gene's chance of being drawn, given the cell's history
    log_weight: np.ndarray | None = None  # [cells] float64 importance weight (module docstring); 0 without a var prompt


@torch.no_grad()
def sample_cells(ckpt: Checkpoint, species: Species, n_cells: int, *, prompt: Prompt | None = None,
                 assay: str | None = None, order: str = "var", temperature: float = 1.0, top_k: int | None = None,
                 max_genes: int | None = None, generator: torch.Generator | None = None,
                 device: str | torch.device = "cpu", inclusion: bool = False) -> Sampled:
    """``inclusion``: also sum, over each cell's steps, every gene's probability of being the one
    drawn. Its mean over cells estimates p(gene in the cell) without the noise of the draws."""
    model = ckpt.model.to(device).eval()
    require_gene_head(ckpt)
    if ckpt.model_cfg.likelihood != "ztp":
        raise ConfigError(f"checkpoint {ckpt.path}: counts are sampled for the ztp likelihood only, "
                          f"not {ckpt.model_cfg.likelihood}")
    prep = preprocessing(ckpt)
    prep.require_causal("sampling", ckpt.path)
    prompt = prompt or Prompt()
    generator = generator or torch.Generator(device=device)
    eps = model.cfg.log_counts_eps
    end, pad = model.special.end, model.special.pad
    limit = min(max_genes or model.cfg.seq_len, model.cfg.seq_len - 1)  # position seq_len - 1 predicts [END]
    in_species = species.mask(model.vocab_size, device)
    if len(prompt.ids) > limit:
        raise InputError(f"--prompt: {len(prompt.ids)} genes, more than the {limit} a cell may have (--max-genes)")

    b = n_cells
    hidden, state = model.decode_start(b, aux_tensor(ckpt, assay, b, device))
    drawn = torch.zeros(b, model.vocab_size, dtype=torch.bool, device=device)
    last = torch.full((b,), -1, dtype=torch.long, device=device)
    genes, counts = [], []
    given_count = torch.zeros(model.vocab_size, device=device)
    given_count[prompt.ids] = torch.tensor(prompt.counts, device=device)
    # var order: the prompt genes are drawn in their var positions, with genes between them;
    # free order: the cell starts with them.
    pending = sorted(prompt.ids) if order == "var" else []
    if prompt.ids and order == "free":
        ids = torch.tensor([prompt.ids] * b, device=device)
        given = given_count[ids]
        hidden = model.decode_genes(state, ids, prep.read_counts(given))
        drawn[:, ids[0]] = True
        last[:] = ids[0, -1]
        genes, counts = list(ids.T), list(given.T)
    placed = torch.zeros(b, dtype=torch.long, device=device)  # prompt genes drawn so far (var order)
    pending_ids = torch.tensor(pending + [-1], dtype=torch.long, device=device)
    log_prob = torch.zeros(b, dtype=torch.float64, device=device)
    log_weight = torch.zeros(b, dtype=torch.float64, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    chance = torch.zeros(b, model.vocab_size, device=device) if inclusion else None
    bar = progress(total=limit + 1 - len(genes), desc=f"sample {b} cells", unit="gene", leave=False)
    for n_read in range(len(genes), limit + 1):
        bar.update()
        due = pending_ids[placed] if pending else None
        allowed = allowed_next(in_species, drawn, last, n_read, order, limit, end, due)
        if pending:  # room left only for the prompt genes still due: take them
            forced = (placed < len(pending)) & (len(pending) - placed >= limit - n_read)
            allowed[forced] = F.one_hot(due[forced], model.vocab_size).bool()
        logits = model.next_gene_logits(hidden)
        logp = restrict(logits, allowed, temperature, top_k)
        gene = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(1)
        if pending:  # the model's own var-order choice, without the prompt's restriction
            own = restrict(logits, allowed_next(in_species, drawn, last, n_read, order, limit, end), temperature, top_k)
            step = (own - logp).gather(1, gene[:, None]).squeeze(1).double()
            log_weight += torch.where(done, 0.0, step)
        if chance is not None:
            chance += logp.exp().masked_fill(done[:, None], 0.0)
        log_prob += torch.where(done, 0.0, logp.gather(1, gene[:, None]).squeeze(1).double())
        done |= gene == end
        if done.all():
            break
        gene = torch.where(done, pad, gene)
        rate = model.count_rate(hidden, gene).float() + eps
        is_given = (gene == due) if due is not None else torch.zeros_like(done)
        count = torch.where(is_given, given_count[gene], sample_ztp(rate, generator))
        count_logp = ztp_log_prob(count, rate).double()
        log_prob += torch.where(done | is_given, 0.0, count_logp)
        log_weight += torch.where(is_given, count_logp, 0.0)
        placed += is_given.long()
        count = count.masked_fill(done, 0.0)
        genes.append(gene)
        counts.append(count)
        drawn[torch.arange(b, device=device), gene] |= ~done
        last = torch.where(done, last, gene)
        hidden = model.decode_genes(state, gene[:, None], prep.read_counts(count)[:, None])
    bar.close()
    gene_rows = torch.stack(genes, 1).cpu().numpy() if genes else np.zeros((b, 0), np.int64)
    count_rows = torch.stack(counts, 1).cpu().numpy() if counts else np.zeros((b, 0), np.float32)
    keep = [row != pad for row in gene_rows]
    return Sampled([g[k] for g, k in zip(gene_rows, keep)], [c[k] for c, k in zip(count_rows, keep)],
                   log_prob.cpu().numpy(), np.array([k.sum() < limit for k in keep], dtype=bool),
                   None if chance is None else chance.cpu().numpy(), log_weight.cpu().numpy())
