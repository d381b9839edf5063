"""BatchTopK SAE training: rewardsae.batchtopk.train_batchtopk against SAELens's BatchTopKTrainingSAE (+ SAETrainer)
and dictionary-learning's BatchTopKTrainer (+ trainSAE), with the machine's fp32 and bf16 matmul peaks measured in
the same run and the same thread count.

All three train on the same activation rows, with the same d_in, d_sae, k, learning rate (constant, no warm-up),
batch size and number of Adam steps, the same AuxK coefficient and the same dead-latent window (--dead-steps steps
without firing), and each scales its inputs by its own rule (rewardsae and SAELens: mean norm sqrt(d_in);
dictionary-learning: mean squared norm 1) and folds the scale back into the weights. Everything else is each
library's own default (SAELens and dictionary-learning clip the gradient norm to 1, rewardsae does not; SAELens
rescales latents by the decoder norms and starts the decoder at norm 0.1; dictionary-learning starts b_dec at a
geometric median; rewardsae calibrates its inference threshold on 16 batches at the end, SAELens keeps its running
average, started at 0 and not bias-corrected, so short runs leave it low and the inference L0 high), except that
dictionary-learning's lr warm-up and threshold start (1000 steps each by default; the warm-up must be shorter than
the run) are set to 0 like the other two. dictionary-learning 0.1.0 lives in its own venv (.venv-bench-dl: its
nnsight 0.3 pulls torchvision, whose PyPI build breaks transformers on a CPU torch) and runs as a subprocess
(bench/dl_batchtopk_worker.py); its imports and its own 2-step warm-up are outside its timed region. rewardsae and
SAELens run in this process, after a 2-step warm-up run each.

Timed: the whole training call (set-up, input-scale estimate, every step, threshold), repeats interleaved; reported:
the median over repeats of seconds per step, and tokens/s = batch / that. FLOPs are counted as the dense SAE step,
10·B·d_in·d_sae (5 matmuls, as bench_sae.py), for every side: rewardsae's step does only the encoder product densely
(sparse decoder and gradients), so its "GFLOP/s" is an effective rate that can pass the peak.
Quality: each trained SAE is converted to a rewardsae BatchTopKSAE (SAELens through its own inference save, in the
jumprelu layout) and evaluated on held-out rows never trained on: FVU, L0 and dead fraction with the JumpReLU
threshold each library learnt (inference), and FVU/L0 with the batch top-k itself (k·B per batch of B rows).
Measure on an otherwise idle machine: with other processes busy, torch's threads wait on each other and the
per-step times of the in-process sides grow several-fold (seen here: 2 threads 13× slower than 1 under load).

    python bench/bench_batchtopk.py                        # synthetic activations
    python bench/bench_batchtopk.py --store DIR --layer L  # real activations from harvest_activations
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars inside the timed regions

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_sae import load_activations, matmul_peak, sae_step_flops  # noqa: E402
from common import HERE, machine, set_threads, table, write_json  # noqa: E402

ROOT = HERE.parent
DL_PYTHON = ROOT / ".venv-bench-dl" / "bin" / "python"


def matmul_rates(shapes: dict, dtype: torch.dtype, min_seconds: float = 0.5) -> dict:
    "torch.mm rate (FLOP/s) of each (m, k, n) in `shapes` for `dtype`, as bench_sae.matmul_peak does for fp32."
    rates = {}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        out = torch.empty(m, n, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_seconds:
            torch.mm(a, b, out=out)
            reps += 1
        rates[name] = 2 * m * k * n * reps / (time.perf_counter() - t0)
    return rates


def step_shapes(batch: int, d_in: int, d_sae: int) -> dict:
    "The dense SAE step's matmul shapes and a 2048³ square (the shapes bench_sae.matmul_peak measures)."
    return {"B×d @ d×m": (batch, d_in, d_sae), "B×m @ m×d": (batch, d_sae, d_in), "m×B @ B×d": (d_sae, batch, d_in),
            "2048³": (2048, 2048, 2048)}


def load_split(store, layer, n_train: int, n_heldout: int, d_in: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    "`(train rows, held-out rows, description)`; held-out rows are never among the training rows."
    if not store:
        x, desc = load_activations(None, None, n_train + n_heldout, d_in)
        return x[:n_train].contiguous(), x[n_train:].contiguous(), desc
    from rewardsae.activations import ActivationStore
    st = ActivationStore(store)
    layer = st.layers[-1] if layer is None else layer
    a = torch.from_numpy(np.array(st.activations(layer), dtype=np.float32))
    if a.shape[1] != d_in:
        raise ValueError(f"the store's activations have width {a.shape[1]}, but --d-in is {d_in}")
    n_held = min(n_heldout, a.shape[0] // 5)   # the store's last rows (its last documents), at most a fifth
    train, held = a[:a.shape[0] - n_held], a[a.shape[0] - n_held:]
    reps = math.ceil(n_train / train.shape[0])
    desc = (f"real: {st.meta.get('site')} output of layer {layer} of {st.meta.get('model')} on {st.meta.get('n_docs')} "
            f"IMDb test reviews ({train.shape[0]} training token vectors" + (f", cycled {reps}×" if reps > 1 else "") +
            f"; the last {n_held} held out)")
    return train.repeat(reps, 1)[:n_train].contiguous(), held.contiguous(), desc


def batches(x: torch.Tensor, batch: int, seed: int = 0):
    "A fresh permutation per epoch, gathered batches (the same work as rewardsae's loader; as bench_sae.py)."
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0] - batch + 1, batch):
            yield x[perm[i:i + batch]]


def run_rewardsae(x, d_sae, k, batch, lr, aux_coef, dead_steps, compute_dtype: str = "float32") -> dict:
    from rewardsae.batchtopk import train_batchtopk
    t0 = time.perf_counter()
    sae, metrics = train_batchtopk(x, d_sae, k=k, lr=lr, epochs=1, batch_size=batch, progress=False, aux_coef=aux_coef,
                                   dead_steps=dead_steps, device="cpu", compute_dtype=compute_dtype)
    return {"seconds": time.perf_counter() - t0, "sae": sae, "train_fvu": float(metrics["fvu"].iloc[-1]),
            "train_l0": float(metrics["l0"].iloc[-1])}


def run_saelens(x, d_sae, k, batch, steps, lr, aux_coef, dead_steps, seed: int = 0) -> dict:
    from sae_lens import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from rewardsae.batchtopk import load_batchtopk

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(
        d_in=x.shape[1], d_sae=d_sae, k=k, aux_loss_coefficient=aux_coef, apply_b_dec_to_input=True,
        normalize_activations="expected_average_only_in", device="cpu"))
    cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr=lr, lr_end=lr,
                           device="cpu", dead_feature_window=dead_steps - 1,   # dead: > window steps without firing
                           # rewardsae estimates the scale on min(n, 65,536) rows: the same number of rows here
                           n_batches_for_norm_estimate=max(1, min(65_536, x.shape[0]) // batch),
                           logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg, sae, batches(x, batch, seed))
    trainer.fit()
    seconds = time.perf_counter() - t0
    if trainer.n_training_steps != steps:
        raise RuntimeError(f"SAELens ran {trainer.n_training_steps} steps instead of {steps}")
    with tempfile.TemporaryDirectory(prefix="bench-saelens-") as d:   # SAELens's own inference (jumprelu) weights
        sae.save_inference_model(d)
        ours = load_batchtopk(d)
    ours.k = k
    return {"seconds": seconds, "sae": ours}


def run_dl(data_path: str, d_sae, k, batch, steps, lr, aux_coef, dead_steps, threads, python: str) -> dict:
    from rewardsae.batchtopk import BatchTopKSAE
    with tempfile.TemporaryDirectory(prefix="bench-dl-") as d:
        out = str(Path(d) / "dl")
        cmd = [python, str(HERE / "dl_batchtopk_worker.py"), "--data", data_path, "--d-sae", str(d_sae), "--k", str(k),
               "--batch-size", str(batch), "--steps", str(steps), "--lr", repr(lr), "--aux-coef", repr(aux_coef),
               "--dead-steps", str(dead_steps), "--threads", str(threads), "--out", out]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"dictionary-learning worker failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
        res = json.loads(Path(out + ".json").read_text())
        w = torch.load(out + ".pt")
    d_in = w["W_enc"].shape[0]
    sae = BatchTopKSAE(d_in, d_sae, k=k)
    with torch.no_grad():
        for key in ("W_enc", "W_dec", "b_enc", "b_dec"):
            getattr(sae, key).copy_(w[key])
        sae.threshold.fill_(float(w["threshold"]))
    res["sae"] = sae.eval()
    return res


@torch.no_grad()
def evaluate(sae, held: torch.Tensor, batch: int) -> dict:
    "Held-out quality: JumpReLU inference (evaluate_batchtopk) and the batch top-k over batches of `batch` rows."
    from rewardsae.batchtopk import evaluate_batchtopk
    ev = evaluate_batchtopk(sae, held)
    sse, nnz, n = 0.0, 0, 0
    starts = range(0, held.shape[0] - batch + 1, batch) if held.shape[0] >= batch else [0]   # full batches only
    for i in starts:
        xb = held[i:i + batch]
        f = sae.encode_batchtopk(xb)
        sse += float((sae.decode(f) - xb).double().pow(2).sum())
        nnz += int((f > 0).sum())
        n += xb.shape[0]
    xs = held[:n].double()
    var = float((xs - xs.mean(0)).pow(2).sum())
    return {"fvu": ev["fvu"], "l0": ev["l0"], "dead_frac": ev["dead_frac"], "threshold": float(sae.threshold),
            "fvu_batchtopk": sse / max(var, 1e-30), "l0_batchtopk": nnz / max(n, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--d-sae", type=int, default=1152)
    ap.add_argument("--k", type=int, default=32, help="active latents per token on average (an integer: "
                    "dictionary-learning asserts one)")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=None,
                    help="Adam steps, one epoch over steps × batch rows (default: 16 synthetic; all full batches "
                         "of --store less the held-out rows, at least 16)")
    ap.add_argument("--heldout", type=int, default=8192, help="held-out rows for FVU/L0 (a store gives at most a fifth)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the median per-step time is reported")
    ap.add_argument("--lr", type=float, default=None, help="default: 2e-4 / sqrt(d_sae / 16384) (all three defaults)")
    ap.add_argument("--aux-coef", type=float, default=1 / 32, help="AuxK coefficient, every side")
    ap.add_argument("--dead-steps", type=int, default=5, help="steps without firing that make a latent dead (AuxK), "
                    "every side (rewardsae's default)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every side (default: nproc)")
    ap.add_argument("--store", default=None, help="an activation store folder (harvest_activations) for real activations")
    ap.add_argument("--layer", type=int, default=None, help="the store's layer to use (default: its deepest)")
    ap.add_argument("--skip-saelens", action="store_true")
    ap.add_argument("--skip-dl", action="store_true", help="leave out dictionary-learning")
    ap.add_argument("--dl-python", default=str(DL_PYTHON), help="python of the dictionary-learning venv")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = ap.parse_args(argv)
    if a.steps is None:
        a.steps = 16
        if a.store:
            from rewardsae.activations import ActivationStore
            n = ActivationStore(a.store).n_tokens
            a.steps = max(16, (n - min(a.heldout, n // 5)) // a.batch_size)
    for key in ("d_in", "d_sae", "k", "batch_size", "steps", "heldout", "repeats", "dead_steps"):
        if getattr(a, key) < 1:
            raise SystemExit(f"ValueError: --{key.replace('_', '-')} must be >= 1, got {getattr(a, key)}")
    if a.k > a.d_sae:
        raise SystemExit(f"ValueError: --k ({a.k}) must be <= --d-sae ({a.d_sae})")
    if not a.skip_saelens:
        try:
            import sae_lens  # noqa: F401
        except ImportError as e:
            raise SystemExit(f"ImportError: SAELens is not installed ({e}); run `make bench` or use --skip-saelens")
    if not a.skip_dl and not Path(a.dl_python).exists():
        raise SystemExit(f"FileNotFoundError: {a.dl_python} (the dictionary-learning venv) is missing; run `make bench` "
                         "or use --skip-dl")
    threads = set_threads(a.threads)
    lr = a.lr if a.lr is not None else 2e-4 / math.sqrt(a.d_sae / 16384)
    B, steps = a.batch_size, a.steps
    x, held, source = load_split(a.store, a.layer, steps * B, a.heldout, a.d_in)
    flops = sae_step_flops(B, a.d_in, a.d_sae)
    print(f"BatchTopK SAE training: d_in {a.d_in}, d_sae {a.d_sae}, k {a.k}, batch {B}, {steps} steps (1 epoch of "
          f"{x.shape[0]} vectors), lr {lr:.3g}, {threads} threads; held out: {held.shape[0]} vectors; "
          f"activations: {source}", flush=True)

    work = tempfile.mkdtemp(prefix="bench-batchtopk-")
    data_path = str(Path(work) / "train.npy")
    kw = dict(d_sae=a.d_sae, k=a.k, batch=B, lr=lr, aux_coef=a.aux_coef, dead_steps=a.dead_steps)
    sides = {"rewardsae BatchTopK": lambda: run_rewardsae(x, **kw),
             "rewardsae BatchTopK, bf16 products": lambda: run_rewardsae(x, compute_dtype="bfloat16", **kw)}
    if not a.skip_saelens:
        sides["SAELens BatchTopK"] = lambda: run_saelens(x, steps=steps, **kw)
    if not a.skip_dl:
        np.save(data_path, x.numpy())
        sides["dictionary-learning BatchTopK"] = lambda: run_dl(data_path, steps=steps, threads=threads,
                                                                python=a.dl_python, **kw)
    try:
        # warm-up: a 2-step run of each in-process side (imports, allocator, thread pool); the dictionary-learning
        # worker warms itself up before its timed run
        xw = x[:2 * B]
        run_rewardsae(xw, **kw)
        run_rewardsae(xw, compute_dtype="bfloat16", **kw)
        if not a.skip_saelens:
            run_saelens(xw, steps=2, **kw)

        runs = {name: [] for name in sides}
        peaks, bf16 = [], []
        for r in range(a.repeats):
            peaks.append(matmul_peak(B, a.d_in, a.d_sae))
            bf16.append(matmul_rates(step_shapes(B, a.d_in, a.d_sae), torch.bfloat16))
            for name, fn in sides.items():
                c0 = time.process_time()
                res = fn()
                res.setdefault("cpu_seconds", time.process_time() - c0)   # the worker reports its own
                res["loadavg_1m"] = os.getloadavg()[0]
                res.update(evaluate(res.pop("sae"), held, B))
                res["seconds_per_step"] = res["seconds"] / steps
                runs[name].append(res)
                print(f"  repeat {r + 1}: {name}: {res['seconds']:.2f} s ({1e3 * res['seconds_per_step']:.1f} ms/step), "
                      f"{res['cpu_seconds']:.2f} CPU-s, held-out FVU {res['fvu']:.3f} L0 {res['l0']:.1f} "
                      f"(batch top-k: FVU {res['fvu_batchtopk']:.3f} L0 {res['l0_batchtopk']:.1f}), "
                      f"load {res['loadavg_1m']:.1f}", flush=True)
    finally:
        Path(data_path).unlink(missing_ok=True)
        os.rmdir(work)

    peak = max(p["peak"] for p in peaks)
    rates32 = {key: max(p["rates"][key] for p in peaks) for key in peaks[0]["rates"]}
    rates16 = {key: max(b[key] for b in bf16) for key in bf16[0]}
    peak16 = max(rates16.values())
    med = lambda name, key: statistics.median(r[key] for r in runs[name])   # noqa: E731
    ref = "SAELens BatchTopK" if "SAELens BatchTopK" in runs else None
    rows = []
    for name in runs:
        sps = med(name, "seconds_per_step")
        rate = flops / sps
        rows.append({"trainer": name, "ms/step": 1e3 * sps, "tokens/s": B / sps,
                     "× SAELens": med(ref, "seconds_per_step") / sps if ref else float("nan"),
                     "CPU-s": med(name, "cpu_seconds"), "GFLOP/s": rate / 1e9, "% of fp32 peak": 100 * rate / peak,
                     "precision": "bf16" if "bf16" in name else "fp32",
                     "% of own peak": 100 * rate / (peak16 if "bf16" in name else peak),
                     **{key: med(name, key) for key in ("fvu", "l0", "dead_frac", "fvu_batchtopk", "l0_batchtopk",
                                                        "threshold")}})
    print()
    print(table(rows, ["trainer", "precision", "ms/step", "tokens/s", "× SAELens", "CPU-s", "GFLOP/s", "% of own peak"]))
    print()
    print("held-out quality (median over repeats): inference = JumpReLU with the learnt threshold; "
          "batch top-k = k·B per batch of B")
    print(table(rows, ["trainer", "fvu", "l0", "dead_frac", "threshold", "fvu_batchtopk", "l0_batchtopk"]))
    print(f"\nfp32 matmul peak in this run: {peak / 1e9:.1f} GFLOP/s (best of: " +
          ", ".join(f"{k_} {v / 1e9:.1f}" for k_, v in rates32.items()) + ")")
    print(f"bf16 matmul peak in this run (the bf16-products row is measured against it; every other side trains in fp32): {peak16 / 1e9:.1f} GFLOP/s (best of: " +
          ", ".join(f"{k_} {v / 1e9:.1f}" for k_, v in rates16.items()) + ")")
    print(f"FLOPs counted per step: 10·B·d_in·d_sae = {flops / 1e9:.2f} GFLOP (the dense step, every side); "
          f"times: median over {a.repeats} repeats of the whole training call / {steps} steps")
    out = {"bench": "batchtopk", "machine": machine(), "args": vars(a), "lr": lr, "activations": source,
           "steps": steps, "n_train": x.shape[0], "n_heldout": held.shape[0], "flops_per_step": flops,
           "matmul_peak_flops": peak, "matmul_rates": rates32, "bf16_matmul_peak_flops": peak16,
           "bf16_matmul_rates": rates16, "rows": rows, "all_repeats": runs,
           "versions": _versions(runs)}
    if a.json:
        write_json(a.json, out)
    return out


def _versions(runs: dict) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    v = {}
    for pkg in ("rewardsae", "sae-lens"):
        try:
            v[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    dl = runs.get("dictionary-learning BatchTopK")
    if dl:
        v["dictionary-learning"] = dl[0].get("dictionary_learning")
        v["torch (dictionary-learning venv)"] = dl[0].get("torch")
    return v


if __name__ == "__main__":
    main()
