"""``continue``: pretraining continued from a checkpoint (official releases included), optionally
with new species. A fresh run with validation sets writes each set's held-out losses before and
after to ``continuation_report.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tfx.registry import OBJECTIVES
from tfx.train.objectives.pretrain import Pretrain

log = logging.getLogger(__name__)


@OBJECTIVES.register("continue")
class Continue(Pretrain):
    starts_from_checkpoint = True

    def before_fit(self, run, rank: int) -> None:
        """Held-out losses of the starting checkpoint (rank 0 of a fresh run with validation sets)."""
        self._sets = self._before = None
        if run.has_validation and run.resume is None and rank == 0:
            self._sets = run.sources(0, 1)[1]
            self._before = held_out(run.checkpoint.model, self._sets)

    def after_fit(self, run, export_dir: Path) -> None:
        if self._before is None:
            return
        from tfx.checkpoint import load_checkpoint

        after = held_out(load_checkpoint(export_dir).model, self._sets)
        report = {name: {"before": self._before[name], "after": after[name]} for name in self._before}
        (run.output_dir / "continuation_report.json").write_text(json.dumps(report, indent=2))
        for name, r in report.items():
            log.info("held-out %s: count NLL %.4f -> %.4f, gene CE %.4f -> %.4f", name, r["before"]["count"],
                     r["after"]["count"], r["before"].get("gene_id", float("nan")),
                     r["after"].get("gene_id", float("nan")))


def held_out(model, val_sets: dict, max_batches: int = 8) -> dict[str, dict[str, float]]:
    """Mean held-out losses per validation set (species): count NLL and next-gene cross-entropy."""
    import torch

    model = model.eval()
    device = next(model.parameters()).device
    result = {}
    with torch.no_grad():
        for name, source in val_sets.items():
            sums, n = {}, 0
            for _, batch in zip(range(max_batches), source):
                batch = batch.to(device)
                for k, v in model.losses(model(batch), batch).items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                n += 1
            result[name] = {k: v / max(n, 1) for k, v in sums.items()}
    model.train()
    return result
