"""The RL stage's step: our GRPO step (rewardsae.grpo, what `make run` uses) against TRL's GRPOTrainer with its default
settings and against TRL with the settings rewardsae gave it before (gradient checkpointing off), on the same
configuration: the cpu preset (SmolLM2-135M, 4 prompts x 4 completions of 8-20 tokens, one update per step, lr 3e-5,
beta 0.05), the same prompts, the utility reward. Each side loads a fresh model and runs `--steps` steps in a
process of its own (nothing one trainer leaves in memory can slow the next), in `--rounds` alternating rounds (a
machine whose speed drifts slows both sides alike); a side's time per step is the median over all its runs' steps
but each run's first `--warmup` (a process's first steps allocate the optimiser state and the allocator's pools and
build oneDNN kernels for each new sequence length: our steps 2-4 took 1.2-1.6x the later ones). TRL runs with its default bf16 autocast, ours with the machine's measured choice (rewardsae.precision); the fp32 and bf16 matmul peaks
are measured in the same run, and each side's rate is an estimate of the step's matmul FLOPs over its time.

    python bench/bench_rl.py --steps 10 --warmup 4 --sides trl-defaults rewardsae   # what make bench runs: 2 rounds of
                                   # 10 steps a side, the last 6 timed (a run's first steps allocate and build kernels)
    python bench/bench_rl.py --steps 50 --rounds 1 --sides trl-defaults rewardsae --logs DIR   # chapter 4a's curves
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, set_threads, table, write_json  # noqa: E402

SIDES = ("trl-defaults", "trl-rewardsae-settings", "rewardsae")


def run_side(side: str, steps: int, workdir: Path, log_every_step: bool = False, seed: int = 0):
    "`(per-step seconds, log DataFrame, config)` of `steps` GRPO steps of the cpu preset (seed `seed`) with the trainer of `side`."
    from rewardsae import rlhf
    from rewardsae.models import load_causal_lm
    from rewardsae.precision import compute_dtype, resolve_dtype
    cfg = rlhf.preset("cpu", steps=steps, compute_dtype=compute_dtype(), seed=seed)
    model, tok = load_causal_lm(cfg.model)
    prompts = rlhf.make_prompts(tok, cfg.steps * cfg.prompts_per_step, seed=cfg.seed, min_tokens=cfg.min_prompt_tokens,
                                max_tokens=cfg.max_prompt_tokens, min_chars=cfg.min_review_chars)
    fn = rlhf.reward_function(cfg.reward)
    torch.manual_seed(cfg.seed)
    if side == "rewardsae":
        from rewardsae.grpo import train_grpo
        log = train_grpo(model, tok, prompts["prompt"], fn, cfg, workdir / side, dtype=resolve_dtype(cfg.compute_dtype),
                         completion_fn=fn)
        return list(log["seconds"]), log, cfg
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    ours = rlhf._grpo_config(cfg, workdir / side)
    if side == "trl-defaults":   # TRL's defaults, except the fields that define the run
        args = GRPOConfig(output_dir=str(workdir / side), use_cpu=True, seed=cfg.seed, data_seed=cfg.seed,
                          max_steps=ours.max_steps, per_device_train_batch_size=cfg.mini_batch,
                          steps_per_generation=ours.steps_per_generation, num_iterations=cfg.epochs,
                          num_generations=cfg.generations, learning_rate=cfg.lr, lr_scheduler_type="constant",
                          max_grad_norm=cfg.max_grad_norm, beta=cfg.beta, epsilon=cfg.clip_eps,
                          max_completion_length=cfg.max_new_tokens, generation_kwargs={"min_new_tokens": cfg.min_new_tokens},
                          temperature=1.0, top_k=0, top_p=1.0, save_strategy="no", report_to="none",
                          **({"logging_steps": 1} if log_every_step else {}))   # TRL's default: every 10 steps
        funcs = [rlhf.grpo_reward(fn, cfg.reward)]
    else:
        args = ours
        args.save_strategy = "no"
        funcs = [rlhf.grpo_reward(fn, cfg.reward), lambda prompts, completions, **_: fn(list(completions))]
    times = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    tr = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=prompts, processing_class=tok,
                     callbacks=[Clock()])
    tr.train()
    return times, rlhf.log_frame(tr.state.log_history), cfg


def step_gflop(cfg, log, n_params: float, prompt_tokens: float = 6.0) -> float:
    """Matrix-product GFLOP of one step, estimated: sampling 2·P per token (prompt and completion), the reference
    model's forward 2·P and the policy's forward + backward 6·P per token of the padded batch."""
    length = float(log["completions/mean_length"].mean()) if "completions/mean_length" in log else cfg.max_new_tokens
    tokens = cfg.batch * (prompt_tokens + length)
    padded = cfg.batch * (cfg.max_prompt_tokens + cfg.max_new_tokens)
    return (2 * n_params * tokens + 8 * n_params * padded) / 1e9


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="steps a side in each round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2, help="steps of each run not timed")
    ap.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    ap.add_argument("--logs", default=None, help="folder for each side's per-step log (rl_log_<side>.csv; _seed<N> added for seeds other than 0)")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed: its prompts and its draws")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    ap.add_argument("--one", default=None, choices=SIDES, help=argparse.SUPPRESS)   # internal: run one side, print JSON
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.one:
        set_threads(a.threads)
        times, log, cfg = run_side(a.one, a.steps, Path(a.workdir), log_every_step=bool(a.logs), seed=a.seed)
        log.to_csv(Path(a.workdir) / f"rl_log_{a.one}.csv", index=False)
        print("RESULT " + json.dumps({"times": times, "compute_dtype": cfg.compute_dtype}), flush=True)
        return
    if a.steps <= a.warmup:
        raise SystemExit(f"--steps must exceed --warmup ({a.warmup}): the first steps of each run only warm up")
    set_threads(a.threads)
    import pandas as pd
    from rewardsae import rlhf
    from rewardsae.precision import matmul_rate
    peak = {"float32": matmul_rate(torch.float32, 2048), "bfloat16": matmul_rate(torch.bfloat16, 2048)}
    print(f"matmul peak GFLOP/s: fp32 {peak['float32']:.0f}, bf16 {peak['bfloat16']:.0f}", flush=True)
    from rewardsae.models import load_causal_lm
    n_params = sum(p.numel() for p in load_causal_lm("smollm2-135m")[0].parameters())
    rows, raw = [], {s: [] for s in a.sides}
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.rounds):
            for side in a.sides:
                t0 = time.perf_counter()
                work = Path(d) / f"r{r}"
                work.mkdir(exist_ok=True)
                cmd = [sys.executable, __file__, "--one", side, "--steps", str(a.steps), "--workdir", str(work), "--seed", str(a.seed),
                       *(["--threads", str(a.threads)] if a.threads else []), *(["--logs", a.logs] if a.logs else [])]
                p = subprocess.run(cmd, capture_output=True, text=True)
                found = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
                if p.returncode != 0 or not found:
                    raise SystemExit(f"RuntimeError: {side} failed (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
                res = json.loads(found[-1][len("RESULT "):])
                times = res["times"]
                log = pd.read_csv(work / f"rl_log_{side}.csv")
                cfg = rlhf.preset("cpu", steps=a.steps, compute_dtype=res["compute_dtype"])
                raw[side].append({"step_seconds": times, "wall": time.perf_counter() - t0, "loadavg_1m": os.getloadavg()[0]})
                print(f"round {r + 1}, {side}: " + ", ".join(f"{t:.2f}" for t in times) + " s a step", flush=True)
                if a.logs and r == a.rounds - 1:
                    Path(a.logs).mkdir(parents=True, exist_ok=True)
                    log.to_csv(Path(a.logs) / f"rl_log_{side}{f'_seed{a.seed}' if a.seed else ''}.csv", index=False)
                if r == a.rounds - 1:
                    after = sorted(t for run in raw[side] for t in run["step_seconds"][a.warmup:])
                    med = after[len(after) // 2]
                    dtype = "bfloat16" if side.startswith("trl") or cfg.compute_dtype == "bfloat16" else "float32"
                    gf = step_gflop(cfg, log, n_params)
                    rows.append({"trainer": side, "precision": dtype, "s/step (median)": med, "steps timed": len(after),
                                 "first step": times[0], "GFLOP/s": gf / med, "% of peak": 100 * gf / med / peak[dtype],
                                 "mean reward": float(log["reward"].mean()), "final kl": float(log["kl"].iloc[-1])})
    ref = {r["trainer"]: r["s/step (median)"] for r in rows}
    for r in rows:
        r["× TRL defaults"] = ref.get("trl-defaults", float("nan")) / r["s/step (median)"]
    if "trl-defaults" in raw and "rewardsae" in raw:   # each round's ratio: the sides ran minutes apart on a drifting host
        med = lambda ts: sorted(ts)[len(ts) // 2]
        per = [med(t["step_seconds"][a.warmup:]) / med(o["step_seconds"][a.warmup:])
               for t, o in zip(raw["trl-defaults"], raw["rewardsae"])]
        print("rewardsae × TRL defaults, round by round: " + ", ".join(f"{x:.2f}" for x in per))
    print(table(rows, ["trainer", "precision", "s/step (median)", "steps timed", "× TRL defaults", "first step", "GFLOP/s", "% of peak",
                       "mean reward", "final kl"]))
    if a.json:
        write_json(a.json, {"machine": machine(), "args": vars(a), "peak_gflops": peak, "rows": rows, "raw": raw})


if __name__ == "__main__":
    main()
