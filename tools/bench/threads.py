"""The quickstart on a shared machine: OpenMP's wait policy and torch's thread count, idle and busy.

    python tools/bench/threads.py [--steps 200] [--cells 300] [--busy N] [--timeout 900]
        [--conditions as-found,busy] [--workdir DIR]

The same short quickstart (synth -> shard -> pretrain -> infer -> eval -> prompt) runs as a fresh
process under each setting, first on the machine as it is, then beside --busy processes (default:
one per core) that each keep a core busy with a pure-Python loop, as a login node's, a CI runner's or
a laptop's other jobs do. Settings:

- ``libgomp default``: ``tfx.cli.main`` with OMP_WAIT_POLICY unset, as tfx ran before it set a
  default: at each barrier a waiting thread spins before it sleeps;
- ``PASSIVE``: OMP_WAIT_POLICY=PASSIVE, waiting threads sleep at once;
- ``PASSIVE + free cores``: also OMP_NUM_THREADS = cores minus busy processes (busy runs only);
- ``tfx script``: the ``tfx quickstart`` command as users run it, with whatever default it sets.

Each phase's seconds come from the quickstart's own step lines. Ratios are against ``libgomp
default`` in the same condition; a run cut at --timeout counts as at least that long.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STEP = re.compile(r"^\[\s*([\d.]+) s\] (\w+)")
PHASES = ["synth", "shard", "pretrain", "infer", "eval", "prompt"]


def settings(busy: int) -> dict[str, tuple[list[str], dict]]:
    """name -> (command, environment changes); None removes a variable."""
    main = [sys.executable, "-c", "import sys; from tfx.cli import main; sys.exit(main(sys.argv[1:]))"]
    script = [str(Path(sys.executable).with_name("tfx"))]
    free = str(max(1, (os.cpu_count() or 1) - busy))
    rows = {"libgomp default": (main, {"OMP_WAIT_POLICY": None}),
            "PASSIVE": (main, {"OMP_WAIT_POLICY": "PASSIVE"})}
    if busy:
        rows["PASSIVE + free cores"] = (main, {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": free})
    rows["tfx script"] = (script, {"OMP_WAIT_POLICY": None})
    return rows


def quickstart(command: list[str], changes: dict, out: Path, args) -> dict:
    """One quickstart in a fresh process: seconds per phase and in all (None where it was cut)."""
    env = {k: v for k, v in os.environ.items() if k not in changes}
    env.update({k: v for k, v in changes.items() if v is not None})
    shutil.rmtree(out, ignore_errors=True)
    cmd = command + ["quickstart", "--output", str(out), "--steps", str(args.steps), "--cells", str(args.cells)]
    started = time.perf_counter()
    try:
        log = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout, check=True).stdout
        total = time.perf_counter() - started
    except subprocess.TimeoutExpired as cut:  # its output comes as bytes, even with text=True
        log, total = (cut.stdout or b"").decode(), None
    marks = [(float(m[1]), m[2]) for m in map(STEP.match, log.splitlines()) if m]
    phases = {name: later - at for (at, name), (later, _) in zip(marks, marks[1:])}
    return {"total": total, **{p: phases.get(p) for p in PHASES}}


def busy_loops(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="pretraining steps (the demo runs 1,500)")
    ap.add_argument("--cells", type=int, default=300, help="cells per species")
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="busy processes beside the busy runs")
    ap.add_argument("--timeout", type=float, default=900, help="seconds before a run is cut")
    ap.add_argument("--conditions", default="as-found,busy", help="comma list of: as-found, busy")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tfx-threads-"))
    print(f"# {platform.node()}: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; quickstart --steps {args.steps} --cells {args.cells}")
    print("| condition | setting | total s | " + " | ".join(PHASES) + " | total vs libgomp default |")
    print("|---|---|---:|" + "---:|" * len(PHASES) + "---:|")
    conditions = {"as-found": ("as found", 0), "busy": (f"beside {args.busy} busy", args.busy)}
    for condition, busy in (conditions[c] for c in args.conditions.split(",")):
        loops = busy_loops(busy)
        try:
            base = None
            for name, (command, changes) in settings(busy).items():
                r = quickstart(command, changes, work / "run", args)
                if name == "libgomp default":
                    base = r["total"] or args.timeout
                ratio = f"{(r['total'] or args.timeout) / base:.2f}x" + ("" if r["total"] else " or less")
                total = f"{r['total']:.1f}" if r["total"] else f">{args.timeout:.0f}"
                row = [condition, name, total, *(f"{r[p]:.1f}" if r[p] is not None else "-" for p in PHASES), ratio]
                print("| " + " | ".join(row) + " |", flush=True)
        finally:
            for p in loops:
                p.kill()
                p.wait()
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
