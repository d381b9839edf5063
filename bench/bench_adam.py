"""Adam implementations inside rewardsae.sae.train_sae at the CPU preset's batch (512): the `foreach` Adam it
uses against torch's `fused` Adam, same data, seed and steps, repeats interleaved in one process; each side's
best (shortest) repeat is reported, with the final FVU and L0 to show the two train the same SAE.

    python bench/bench_adam.py --store DIR --layer L   # real activations from harvest_activations
    python bench/bench_adam.py                         # synthetic activations
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, set_threads, table, write_json  # noqa: E402

import rewardsae.sae as sae_module  # noqa: E402

ADAM = torch.optim.Adam


def adam(kind: str):
    "torch.optim.Adam with `kind` ('foreach' or 'fused') forced, whatever train_sae asks for."
    def make(params, **kw):
        kw.pop("foreach", None)
        kw.pop("fused", None)
        return ADAM(params, **kw, **{kind: True})
    return make


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=None, help="an activation store folder (default: synthetic data)")
    ap.add_argument("--layer", type=int, default=None, help="the store's layer to use (default: its deepest)")
    ap.add_argument("--n-tokens", type=int, default=30000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    set_threads(a.threads)
    if a.store:
        from rewardsae.activations import ActivationStore
        store = ActivationStore(a.store)
        layer = a.layer if a.layer is not None else max(store.layers)
        X = np.asarray(store.activations(layer)[:a.n_tokens], dtype=np.float32)
    else:
        X = np.random.default_rng(0).standard_normal((a.n_tokens, 576)).astype(np.float32)
    runs = {"foreach": [], "fused": []}
    try:
        for _ in range(a.repeats):
            for kind in runs:
                sae_module.torch.optim.Adam = adam(kind)
                t0 = time.perf_counter()
                _, m = sae_module.train_sae(X, 2 * X.shape[1], l1_coef=1e-3, lr=1e-2, epochs=a.epochs,
                                            batch_size=a.batch_size, seed=0, progress=False)
                runs[kind].append({"seconds": time.perf_counter() - t0, "fvu": float(m.fvu.iloc[-1]),
                                   "l0": float(m.l0.iloc[-1]), "loadavg_1m": os.getloadavg()[0]})
    finally:
        sae_module.torch.optim.Adam = ADAM
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    rows = [{"adam": k, "seconds": r["seconds"], "× foreach": best["foreach"]["seconds"] / r["seconds"],
             "fvu": r["fvu"], "l0": r["l0"]} for k, r in best.items()]
    print(table(rows, ["adam", "seconds", "× foreach", "fvu", "l0"]))
    if a.json:
        write_json(a.json, {"machine": machine(), "args": vars(a), "runs": runs, "best": rows})


if __name__ == "__main__":
    main()
