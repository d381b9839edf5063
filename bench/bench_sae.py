"""SAE training throughput: rewardsae.sae.train_sae against SAELens's standard (ReLU + L1) trainer, and against
the machine's fp32 matmul peak, all measured in one process with the same thread count.

Both trainers see the same in-memory activations, the same batch size and the same number of Adam steps.
The SAELens side is built from its public classes (StandardTrainingSAE + SAETrainer, no wandb); its SAE
is configured with `apply_b_dec_to_input=False` so that both sides train the same model
(f = ReLU(x W_enc + b_enc), x_hat = f W_dec + b_dec). rewardsae is timed untied (the same architecture)
and tied (the paper's default). Repeats are interleaved; each side's best (shortest) repeat is reported.

    python bench/bench_sae.py                       # synthetic activations
    python bench/bench_sae.py --store DIR --layer L # real activations from harvest_activations
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars inside the timed regions (both sides use tqdm)

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, set_threads, table, write_json  # noqa: E402


def sae_step_flops(batch: int, d_in: int, d_sae: int) -> int:
    """Matmul FLOPs of one SAE training step: forward x@W_enc (B×d×m) and f@W_dec (B×m×d); backward
    dL/dx_hat@W_dec^T (B×d×m), f^T@dL/dx_hat (m×B×d) and dL/dpre^T@x (m×B×d): 5 matmuls of 2·B·d·m each."""
    return 5 * 2 * batch * d_in * d_sae


def matmul_peak(batch: int, d_in: int, d_sae: int, min_seconds: float = 0.5) -> dict:
    "Best fp32 torch.mm rate (FLOP/s) over the SAE step's own matmul shapes and a 2048³ square."
    shapes = {"B×d @ d×m": (batch, d_in, d_sae), "B×m @ m×d": (batch, d_sae, d_in), "m×B @ B×d": (d_sae, batch, d_in),
              "2048³": (2048, 2048, 2048)}
    rates = {}
    for name, (m, k, n) in shapes.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        torch.mm(a, b, out=out)  # warm-up
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < min_seconds:
            torch.mm(a, b, out=out)
            reps += 1
        rates[name] = 2 * m * k * n * reps / (time.perf_counter() - t0)
    # for information only (not the fp32 peak): the same first shape in bf16, which this CPU may run faster
    a, b = torch.randn(batch, d_in, dtype=torch.bfloat16), torch.randn(d_in, d_sae, dtype=torch.bfloat16)
    torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        torch.mm(a, b)
        reps += 1
    bf16 = 2 * batch * d_in * d_sae * reps / (time.perf_counter() - t0)
    return {"rates": rates, "peak": max(rates.values()), "bf16_rate": bf16}


def load_activations(store: str | None, layer: int | None, n_rows: int, d_in: int, seed: int = 0) -> tuple[torch.Tensor, str]:
    "`(float32 tensor (n_rows, d_in), description)`: real rows of a harvested store (recycled if short) or synthetic."
    if store:
        from rewardsae.activations import ActivationStore
        st = ActivationStore(store)
        layer = st.layers[-1] if layer is None else layer
        a = torch.from_numpy(np.array(st.activations(layer), dtype=np.float32))
        if a.shape[1] != d_in:
            raise ValueError(f"the store's activations have width {a.shape[1]}, but --d-in is {d_in}")
        reps = math.ceil(n_rows / a.shape[0])
        desc = (f"real: {st.meta.get('site')} output of layer {layer} of {st.meta.get('model')} on "
                f"{st.meta.get('n_docs')} IMDb test reviews ({a.shape[0]} token vectors" +
                (f", cycled {reps}×)" if reps > 1 else ")"))
        return a.repeat(reps, 1)[:n_rows].contiguous(), desc
    # synthetic: sparse non-negative combinations of random unit directions plus a mean offset and noise,
    # with the scale of MLP outputs (norm ~ a few units)
    g = torch.Generator().manual_seed(seed)
    feats = torch.nn.functional.normalize(torch.randn(4 * d_in, d_in, generator=g), dim=1)
    on = (torch.rand(n_rows, 4 * d_in, generator=g) < 8 / (4 * d_in)).float()
    x = (on * torch.rand(n_rows, 4 * d_in, generator=g)) @ feats + 0.05 * torch.randn(n_rows, d_in, generator=g)
    return (x + 0.1 * torch.randn(d_in, generator=g)).contiguous(), "synthetic (sparse combinations of random directions)"


def run_rewardsae(x: torch.Tensor, d_sae: int, batch: int, epochs: int, tied: bool, l1: float, lr: float,
                  compute_dtype: str = "float32") -> dict:
    from rewardsae.sae import train_sae
    t0 = time.perf_counter()
    _, metrics = train_sae(x, d_sae, l1_coef=l1, lr=lr, epochs=epochs, batch_size=batch, tied=tied, progress=False,
                           device="cpu", compute_dtype=compute_dtype)
    return {"seconds": time.perf_counter() - t0, "fvu": float(metrics["fvu"].iloc[-1]), "l0": float(metrics["l0"].iloc[-1])}


def run_saelens(x: torch.Tensor, d_sae: int, batch: int, steps: int, l1: float, lr: float, seed: int = 0) -> dict:
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    def batches():  # the same work as rewardsae's loader: a fresh permutation per epoch, gathered batches
        g = torch.Generator().manual_seed(seed)
        while True:
            perm = torch.randperm(x.shape[0], generator=g)
            for i in range(0, x.shape[0] - batch + 1, batch):
                yield x[perm[i:i + batch]]

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=x.shape[1], d_sae=d_sae, l1_coefficient=l1,
                                                        apply_b_dec_to_input=False, device="cpu"))
    cfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr=lr, lr_end=lr, device="cpu",
                           logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(cfg, sae, batches())
    trainer.fit()
    seconds = time.perf_counter() - t0
    if trainer.n_training_steps != steps:
        raise RuntimeError(f"SAELens ran {trainer.n_training_steps} steps instead of {steps}")
    with torch.no_grad():   # its final FVU and L0 on the training rows, as rewardsae's last epoch reports them
        f = sae.encode(x)
        fvu = float((sae.decode(f) - x).double().pow(2).sum() / (x.double() - x.double().mean(0)).pow(2).sum())
        l0 = float((f > 0).float().sum(1).mean())
    return {"seconds": seconds, "fvu": fvu, "l0": l0}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d-in", type=int, default=576)
    ap.add_argument("--d-sae", type=int, default=1152)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--steps-per-epoch", type=int, default=None,
                    help="distinct batches in the data (default: 8 synthetic; all full batches of --store)")
    ap.add_argument("--epochs", type=int, default=4, help="steps = steps-per-epoch × epochs")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; each side's best is reported")
    ap.add_argument("--l1-coef", type=float, default=1e-3)
    ap.add_argument("--saelens-l1-coef", type=float, default=None,
                    help="SAELens's L1 coefficient (default: --l1-coef). Its penalty is weighted by the decoder row norms, "
                         "so the same number is a weaker penalty than ours: pass the one that gives its SAE our L0, to "
                         "compare at equal sparsity")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every side (default: nproc)")
    ap.add_argument("--store", default=None, help="an activation store folder (harvest_activations) for real activations")
    ap.add_argument("--layer", type=int, default=None, help="the store's layer to use (default: its deepest)")
    ap.add_argument("--skip-saelens", action="store_true", help="measure rewardsae and the matmul peak only")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    a = ap.parse_args(argv)
    if a.steps_per_epoch is None:
        a.steps_per_epoch = 8
        if a.store:
            from rewardsae.activations import ActivationStore
            a.steps_per_epoch = max(1, ActivationStore(a.store).n_tokens // a.batch_size)
    for k in ("d_in", "d_sae", "batch_size", "steps_per_epoch", "epochs", "repeats"):
        if getattr(a, k) < 1:
            raise SystemExit(f"ValueError: --{k.replace('_', '-')} must be >= 1, got {getattr(a, k)}")
    if not a.skip_saelens:
        try:
            import sae_lens  # noqa: F401
        except ImportError as e:
            raise SystemExit(f"ImportError: SAELens is not installed ({e}); run `make bench` or use --skip-saelens")
    set_threads(a.threads)

    B, steps = a.batch_size, a.steps_per_epoch * a.epochs
    x, source = load_activations(a.store, a.layer, a.steps_per_epoch * B, a.d_in)
    flops = sae_step_flops(B, a.d_in, a.d_sae) * steps
    print(f"SAE training: d_in {a.d_in}, d_sae {a.d_sae}, batch {B}, {steps} steps "
          f"({x.shape[0]} vectors × {a.epochs} epochs), {torch.get_num_threads()} threads; activations: {source}",
          flush=True)

    sides = {"rewardsae untied": lambda: run_rewardsae(x, a.d_sae, B, a.epochs, False, a.l1_coef, a.lr),
             "rewardsae tied (paper)": lambda: run_rewardsae(x, a.d_sae, B, a.epochs, True, a.l1_coef, a.lr),
             "rewardsae untied, bf16 products": lambda: run_rewardsae(x, a.d_sae, B, a.epochs, False, a.l1_coef, a.lr, "bfloat16"),
             "rewardsae tied (paper), bf16 products": lambda: run_rewardsae(x, a.d_sae, B, a.epochs, True, a.l1_coef, a.lr, "bfloat16")}
    if not a.skip_saelens:
        sl1 = a.l1_coef if a.saelens_l1_coef is None else a.saelens_l1_coef
        sides["SAELens standard"] = lambda: run_saelens(x, a.d_sae, B, steps, sl1, a.lr)
    # warm-up: a 2-step run of each side (imports, allocator, thread pool)
    xw = x[:2 * B]
    run_rewardsae(xw, a.d_sae, B, 1, False, a.l1_coef, a.lr)
    run_rewardsae(xw, a.d_sae, B, 1, True, a.l1_coef, a.lr)
    run_rewardsae(xw, a.d_sae, B, 1, True, a.l1_coef, a.lr, "bfloat16")
    if not a.skip_saelens:
        run_saelens(xw, a.d_sae, B, 2, a.l1_coef, a.lr)

    runs = {k: [] for k in sides}
    peaks = []
    for r in range(a.repeats):
        peaks.append(matmul_peak(B, a.d_in, a.d_sae))
        for name, fn in sides.items():
            c0 = time.process_time()
            res = fn()
            res["cpu_seconds"] = time.process_time() - c0
            res["loadavg_1m"] = os.getloadavg()[0]
            runs[name].append(res)
            print(f"  repeat {r + 1}: {name}: {res['seconds']:.2f} s, {res['cpu_seconds']:.2f} CPU-s "
                  f"({steps * B / res['seconds']:,.0f} vectors/s), load {res['loadavg_1m']:.1f}", flush=True)
    peak = max(p["peak"] for p in peaks)
    peak16 = max(p["bf16_rate"] for p in peaks)
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    ref = best.get("SAELens standard")
    cpu = {k: min(r["cpu_seconds"] for r in v) for k, v in runs.items()}
    rows = []
    for name, res in best.items():
        rate = flops / res["seconds"]
        rows.append({"trainer": name, "seconds": res["seconds"], "vectors/s": steps * B / res["seconds"],
                     "× SAELens": (ref["seconds"] / res["seconds"]) if ref else float("nan"),
                     "CPU-s": cpu[name],
                     "× SAELens by CPU-s": (cpu["SAELens standard"] / cpu[name]) if ref else float("nan"),
                     "GFLOP/s": rate / 1e9, "% of matmul peak": 100 * rate / peak,
                     "precision": "bf16" if "bf16" in name else "fp32",
                     "% of own peak": 100 * rate / (peak16 if "bf16" in name else peak),
                     "final FVU": res.get("fvu", ""), "final L0": res.get("l0", "")})
    print()
    print(table(rows, ["trainer", "precision", "seconds", "vectors/s", "× SAELens", "CPU-s", "× SAELens by CPU-s", "GFLOP/s",
                       "% of own peak", "final FVU", "final L0"]))
    print(f"\nfp32 matmul peak in this run: {peak / 1e9:.1f} GFLOP/s (best of: " +
          ", ".join(f"{k} {max(p['rates'][k] for p in peaks) / 1e9:.1f}" for k in peaks[0]["rates"]) + ")")
    print(f"bf16 B×d @ d×m in this run (the bf16 rows' peak): {peak16 / 1e9:.1f} GFLOP/s")
    print(f"FLOPs counted per step: 10·B·d_in·d_sae = {sae_step_flops(B, a.d_in, a.d_sae) / 1e9:.2f} GFLOP (5 matmuls)")
    out = {"bench": "sae", "machine": machine(), "args": vars(a), "activations": source, "steps": steps,
           "flops_per_step": sae_step_flops(B, a.d_in, a.d_sae), "matmul_peak_flops": peak,
           "matmul_rates": {k: max(p["rates"][k] for p in peaks) for k in peaks[0]["rates"]},
           "bf16_matmul_rate": max(p["bf16_rate"] for p in peaks),
           "rows": rows, "all_repeats": runs}
    if a.json:
        write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
