"""Crosscoder training: rewardsae.crosscoder.train_crosscoder (a BatchTopK crosscoder on paired activations) against
dictionary-learning's BatchTopKTrainer on the concatenation [x_base, x_tuned] (dictionary-learning 0.1.0 has no
crosscoder; a BatchTopK SAE on the concatenated pair is the same computation up to how the top-k score weights the
two decoder halves), with the machine's fp32 and bf16 matmul peaks measured in the same run and thread count.

Both train on the same paired rows with the same latents, k, learning rate (constant, no warm-up), batch size, number
of Adam steps, AuxK coefficient and dead-latent window; each scales its inputs by its own rule (rewardsae: each model's
rows to mean norm sqrt(d); dictionary-learning: the concatenation to mean squared norm 1) and folds the scale back.
dictionary-learning runs in its own venv as a subprocess (bench/dl_batchtopk_worker.py, as in bench_batchtopk.py).

Pairs: two activation stores of the same layer (`--store` base, `--store-tuned` tuned: what model diffing trains on)
or, with one store, two of its layers as the two "models" (`--layers A B`): the same shapes and the same work.

Timed: the whole training call, repeats interleaved; the median seconds per step is reported. FLOPs are those of the
dense step on the concatenation, 10·B·(2d)·m, for both sides (rewardsae's step is sparse after the encoder product,
so its rate is an effective one). Quality on held-out pairs never trained on: FVU of the concatenated pair (both
halves' squared error over both halves' variance) and L0, each with its own inference threshold.

    python bench/bench_crosscoder.py --store DIR --layers 14 15
    python bench/bench_crosscoder.py --store BASE --store-tuned TUNED --layers 18
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_batchtopk import DL_PYTHON, matmul_rates, run_dl, step_shapes  # noqa: E402
from bench_sae import matmul_peak, sae_step_flops  # noqa: E402
from common import machine, set_threads, table, write_json  # noqa: E402


def load_pairs(store: str, store_tuned: str | None, layers: list[int], n_train: int, n_heldout: int):
    "`(xb, xt, held_b, held_t, description)`: paired rows, the store's last rows held out (at most a fifth)."
    from rewardsae.activations import ActivationStore
    sb = ActivationStore(store)
    st = ActivationStore(store_tuned) if store_tuned else sb
    la, lb = (layers[0], layers[0]) if store_tuned else (layers[0], layers[1])
    a = torch.from_numpy(np.array(sb.activations(la), dtype=np.float32))
    b = torch.from_numpy(np.array(st.activations(lb), dtype=np.float32))
    if a.shape != b.shape:
        raise ValueError(f"the paired activations differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    n_held = min(n_heldout, a.shape[0] // 5)
    n_tr = min(n_train, a.shape[0] - n_held)
    desc = (f"real: {sb.meta.get('site')} output of {sb.meta.get('model')}, " +
            (f"layer {la} of base and tuned stores" if store_tuned else f"layers {la} and {lb} as the pair") +
            f" ({n_tr} training pairs; the last {n_held} held out)")
    return (a[:n_tr].contiguous(), b[:n_tr].contiguous(), a[-n_held:].contiguous(), b[-n_held:].contiguous(), desc)


@torch.no_grad()
def concat_fvu(encode_decode, held_b: torch.Tensor, held_t: torch.Tensor, batch: int = 4096) -> tuple[float, float]:
    "`(FVU of the concatenated pair, L0)` on held-out pairs; `encode_decode(xb, xt) -> (xb_hat, xt_hat, l0 sum)`."
    sse, nnz = 0.0, 0
    for i in range(0, held_b.shape[0], batch):
        xb, xt = held_b[i:i + batch], held_t[i:i + batch]
        hb, ht, z = encode_decode(xb, xt)
        sse += float((hb - xb).double().pow(2).sum() + (ht - xt).double().pow(2).sum())
        nnz += int(z)
    var = sum(float((h.double() - h.double().mean(0)).pow(2).sum()) for h in (held_b, held_t))
    return sse / max(var, 1e-30), nnz / held_b.shape[0]


def run_rewardsae(xb, xt, d_sae, k, batch, lr, aux_coef, dead_steps, compute_dtype="float32") -> dict:
    from rewardsae.crosscoder import train_crosscoder
    t0 = time.perf_counter()
    cc, curve = train_crosscoder(xb, xt, d_sae, k=k, lr=lr, epochs=1, batch_size=batch, aux_coef=aux_coef,
                                 dead_steps=dead_steps, progress=False, compute_dtype=compute_dtype)
    seconds = time.perf_counter() - t0

    def ed(b, t):
        f = cc.encode(torch.stack([b, t], dim=1))                          # (n × 2 × d) raw pairs
        out = cc.decode(f)
        return out[:, 0], out[:, 1], (f > 0).sum()
    return {"seconds": seconds, "ed": ed}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="activation store (harvest_activations) of the base model")
    ap.add_argument("--store-tuned", default=None, help="the tuned model's store (same reviews); default: pair two layers of --store")
    ap.add_argument("--layers", type=int, nargs="+", default=None, help="the layer (two stores) or the two layers (one store)")
    ap.add_argument("--d-sae", type=int, default=2304, help="latents (the pipeline's crosscoder: 4 × d)")
    ap.add_argument("--k", type=int, default=62, help="active latents per pair on average (the cpu preset's k)")
    ap.add_argument("--batch-size", type=int, default=1024, help="the cpu preset's batch")
    ap.add_argument("--steps", type=int, default=None, help="Adam steps (default: one epoch of the training pairs)")
    ap.add_argument("--heldout", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3, help="both sides (the pipeline's crosscoder lr)")
    ap.add_argument("--aux-coef", type=float, default=1 / 32)
    ap.add_argument("--dead-steps", type=int, default=50, help="the crosscoder's default window, both sides")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-dl", action="store_true")
    ap.add_argument("--dl-python", default=str(DL_PYTHON))
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from rewardsae.activations import ActivationStore
    if a.layers is None:
        ls = ActivationStore(a.store).layers
        a.layers = [ls[-1]] if a.store_tuned else sorted(ls)[-2:]
    if len(a.layers) != (1 if a.store_tuned else 2):
        raise SystemExit("ValueError: --layers takes one layer with --store-tuned, two layers without")
    for key in ("d_sae", "k", "batch_size", "heldout", "repeats", "dead_steps"):
        if getattr(a, key) < 1:
            raise SystemExit(f"ValueError: --{key.replace('_', '-')} must be >= 1, got {getattr(a, key)}")
    if not a.skip_dl and not Path(a.dl_python).exists():
        raise SystemExit(f"FileNotFoundError: {a.dl_python} (the dictionary-learning venv) is missing; run `make bench` or use --skip-dl")
    threads = set_threads(a.threads)
    xb, xt, hb, ht, source = load_pairs(a.store, a.store_tuned, a.layers, 10**9, a.heldout)
    B = a.batch_size
    steps = a.steps or xb.shape[0] // B
    xb, xt = xb[:steps * B], xt[:steps * B]
    if xb.shape[0] < steps * B:
        raise SystemExit(f"ValueError: {steps} steps of {B} need {steps * B} training pairs; the stores hold {xb.shape[0]}")
    d = xb.shape[1]
    flops = sae_step_flops(B, 2 * d, a.d_sae)
    print(f"Crosscoder training: d {d} per model (2d = {2 * d} concatenated), {a.d_sae} latents, k {a.k}, batch {B}, "
          f"{steps} steps, lr {a.lr:g}, {threads} threads; held out {hb.shape[0]} pairs; activations: {source}", flush=True)
    kw = dict(d_sae=a.d_sae, k=a.k, batch=B, lr=a.lr, aux_coef=a.aux_coef, dead_steps=a.dead_steps)
    sides = {"rewardsae crosscoder": lambda: run_rewardsae(xb, xt, **kw),
             "rewardsae crosscoder, bf16 products": lambda: run_rewardsae(xb, xt, compute_dtype="bfloat16", **kw)}
    work = tempfile.mkdtemp(prefix="bench-crosscoder-")
    data_path = str(Path(work) / "train.npy")
    if not a.skip_dl:
        np.save(data_path, torch.cat([xb, xt], dim=1).numpy())

        def dl():
            r = run_dl(data_path, steps=steps, threads=threads, python=a.dl_python, **kw)
            sae = r.pop("sae")

            def ed(b, t):
                f = sae.encode(torch.cat([b, t], dim=1))
                out = sae.decode(f)
                return out[:, :d], out[:, d:], (f > 0).sum()
            r["ed"] = ed
            return r
        sides["dictionary-learning BatchTopK on [x_base, x_tuned]"] = dl
    try:
        run_rewardsae(xb[:2 * B], xt[:2 * B], **kw)                      # warm-up (imports, allocator, threads)
        run_rewardsae(xb[:2 * B], xt[:2 * B], compute_dtype="bfloat16", **kw)
        runs = {name: [] for name in sides}
        peaks, bf16 = [], []
        for r in range(a.repeats):
            peaks.append(matmul_peak(B, 2 * d, a.d_sae))
            bf16.append(matmul_rates(step_shapes(B, 2 * d, a.d_sae), torch.bfloat16))
            for name, fn in sides.items():
                c0 = time.process_time()
                res = fn()
                res.setdefault("cpu_seconds", time.process_time() - c0)
                res["fvu"], res["l0"] = concat_fvu(res.pop("ed"), hb, ht)
                res["seconds_per_step"] = res["seconds"] / steps
                res["loadavg_1m"] = os.getloadavg()[0]
                runs[name].append(res)
                print(f"  repeat {r + 1}: {name}: {res['seconds']:.2f} s ({1e3 * res['seconds_per_step']:.1f} ms/step), "
                      f"held-out FVU {res['fvu']:.3f} L0 {res['l0']:.1f}, load {res['loadavg_1m']:.1f}", flush=True)
    finally:
        Path(data_path).unlink(missing_ok=True)
        os.rmdir(work)
    peak = max(p["peak"] for p in peaks)
    peak16 = max(max(b.values()) for b in bf16)
    med = lambda name, key: statistics.median(r[key] for r in runs[name])   # noqa: E731
    ref = next((n for n in runs if n.startswith("dictionary-learning")), None)
    rows = []
    for name in runs:
        sps = med(name, "seconds_per_step")
        rate = flops / sps
        low = "bf16" in name
        rows.append({"trainer": name, "precision": "bf16" if low else "fp32", "ms/step": 1e3 * sps, "pairs/s": B / sps,
                     "× dictionary-learning": med(ref, "seconds_per_step") / sps if ref else float("nan"),
                     "GFLOP/s": rate / 1e9, "% of own peak": 100 * rate / (peak16 if low else peak),
                     "fvu": med(name, "fvu"), "l0": med(name, "l0")})
    print()
    print(table(rows, ["trainer", "precision", "ms/step", "pairs/s", "× dictionary-learning", "GFLOP/s", "% of own peak", "fvu", "l0"]))
    print(f"\nfp32 matmul peak in this run: {peak / 1e9:.1f} GFLOP/s; bf16: {peak16 / 1e9:.1f} GFLOP/s. FLOPs counted per "
          f"step: 10·B·2d·m = {flops / 1e9:.2f} GFLOP (the dense step on the concatenation, both sides)")
    out = {"bench": "crosscoder", "machine": machine(), "args": vars(a), "activations": source, "steps": steps,
           "flops_per_step": flops, "matmul_peak_flops": peak, "bf16_matmul_peak_flops": peak16, "rows": rows,
           "all_repeats": runs}
    if a.json:
        write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
