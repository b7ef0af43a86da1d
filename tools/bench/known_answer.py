"""Known-answer training: the student's held-out nll against the teacher's entropy, step by step.

    python tools/bench/known_answer.py [--train-cells 3000] [--heldout-cells 300]
        [--steps 1,50,100,200,400] [--work DIR] [--seed 0]

See tools/known_answer.py: a teacher samples cells (`tfx generate --order var`), students of the
same shape are trained from scratch (`tfx shard`, `tfx train pretrain/tiny`, one run per step
count, one LR schedule as long as the longest), and each is scored on the held-out cells (`tfx
infer --outputs nll`). Prints the curve and each point's closure of the gap between the student
after 1 step and the entropy estimate mean(-log_prob) (the baseline, measured in the same run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from known_answer import known_answer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-cells", type=int, default=3000)
    p.add_argument("--heldout-cells", type=int, default=300)
    p.add_argument("--steps", default="1,50,100,200,400")
    p.add_argument("--work", type=Path, default=None, help="keep the run here (default: a temporary directory)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        print(f"{'steps':>6} {'held-out nll':>13} {'closure':>8} {'elapsed':>8}")

        def show(n, r):
            closure = "" if n == 1 else f"{r.closure(n):8.1%}"
            print(f"{n:>6} {r.nll[n]:>13.3f} {closure:>8} {time.perf_counter() - started:>7.0f}s", flush=True)

        r = known_answer(work, train_cells=args.train_cells, heldout_cells=args.heldout_cells, steps=steps,
                         seed=args.seed, progress=show)
    print(f"entropy estimate mean(-log_prob): {r.entropy:.3f} +- {r.entropy_se:.3f} (s.e.), "
          f"{r.genes_per_cell:.1f} genes per held-out cell")
    print(f"gap closed by {max(steps)} steps: {r.closure(max(steps)):.1%}")


if __name__ == "__main__":
    main()
