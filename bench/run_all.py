"""Every benchmark in one go (what `make bench` runs): activation harvesting (throughput and memory, fp32 and bf16
products), tied/untied L1 SAE training against SAELens, BatchTopK SAE training against SAELens and dictionary-learning
(its venv: .venv-bench-dl), crosscoder training against dictionary-learning's BatchTopK on the concatenated pair, each
beside the fp32 and bf16 matmul peaks measured in the same run, on the harvested real activations at the cpu preset's
batch; the RL stage's GRPO step against TRL's GRPOTrainer with its defaults; and the stage timings of finished runs.
Each benchmark runs in its own process with the same thread count; JSON results go to bench/results/.

    python bench/run_all.py                 # the sizes BENCHMARKS.md reports
    python bench/run_all.py --quick         # tiny sizes, to check that everything runs
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> None:
    cmd = [sys.executable, str(HERE / script), *args]
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    p = subprocess.run(cmd)
    if p.returncode != 0:
        raise SystemExit(f"RuntimeError: {script} failed (exit {p.returncode})")
    print(f"({script}: {time.perf_counter() - t0:.0f} s)", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for every side (default: nproc)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the scripts, measures nothing useful")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder for the JSON results")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rewardsae-bench-"))
    th = ["--threads", str(a.threads)]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"load average before: {os.getloadavg()}", flush=True)
    try:
        store = work / "store"
        if a.quick:
            run("bench_harvest.py", "--n-docs", "8", "--mem-docs", "4", "--batch-size", "4", "--max-length", "32",
                "--repeats", "1", "--workdir", str(work), "--keep-store", str(store), "--json", str(out / "quick_harvest.json"), *th)
            run("bench_sae.py", "--store", str(store), "--batch-size", "64", "--epochs", "1", "--repeats", "1",
                "--json", str(out / "quick_sae.json"), *th)
            run("bench_batchtopk.py", "--store", str(store), "--batch-size", "64", "--steps", "4", "--heldout", "64",
                "--repeats", "1", "--json", str(out / "quick_batchtopk.json"), *th)
            run("bench_crosscoder.py", "--store", str(store), "--layers", "12", "15", "--batch-size", "64", "--steps", "4",
                "--d-sae", "256", "--k", "8", "--heldout", "64", "--repeats", "1", "--json", str(out / "quick_crosscoder.json"), *th)
        else:   # every comparison at the cpu preset's dictionary batch (1024) and k (62); 2 interleaved repeats each
            run("bench_harvest.py", "--n-docs", "32", "--mem-docs", "64", "--repeats", "2", "--workdir", str(work),
                "--keep-store", str(store), "--json", str(out / "harvest.json"), *th)
            run("bench_sae.py", "--store", str(store), "--batch-size", "1024", "--epochs", "2", "--repeats", "2", "--saelens-l1-coef", "2.0",
                "--json", str(out / "sae_batch1024.json"), *th)
            run("bench_batchtopk.py", "--store", str(store), "--batch-size", "1024", "--k", "62", "--lr", "6e-3",
                "--repeats", "2", "--json", str(out / "batchtopk_batch1024.json"), *th)
            run("bench_crosscoder.py", "--store", str(store), "--layers", "12", "15", "--batch-size", "1024",
                "--repeats", "2", "--json", str(out / "crosscoder_batch1024.json"), *th)
        if a.quick:
            run("bench_rl.py", "--steps", "2", "--rounds", "1", "--warmup", "1", "--sides", "trl-defaults", "rewardsae", "--json", str(out / "quick_rl.json"), *th)
        else:   # the RL step against TRL's defaults: 2 alternating rounds of 10 steps a side, the last 6 timed (~4 min)
            run("bench_rl.py", "--steps", "10", "--warmup", "4", "--rounds", "2", "--sides", "trl-defaults", "rewardsae",
                "--json", str(out / "rl.json"), *th)
        run("stage_timings.py", "--json", str(out / ("quick_stages.json" if a.quick else "stages.json")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average after: {os.getloadavg()}; results in {out}", flush=True)


if __name__ == "__main__":
    main()
