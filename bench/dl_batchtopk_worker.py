"""The `dictionary-learning` side of bench_batchtopk.py, run as a subprocess in its own venv (.venv-bench-dl):
dictionary-learning 0.1.0 needs nnsight < 0.4, which pulls torchvision and a transformers stack of its own, so
it is kept out of .venv-bench (see the Makefile's bench target). Only torch and dictionary_learning are imported.

Reads the training rows (a float32 .npy written by bench_batchtopk.py), trains the library's BatchTopKSAE through
its own `trainSAE` loop (BatchTopKTrainer, with its `normalize_activations=True` input scaling), after a 2-step
warm-up run, and writes the timing (JSON) and the trained weights in raw-activation units (torch.save) to --out.

    .venv-bench-dl/bin/python bench/dl_batchtopk_worker.py --data X.npy --d-sae 1152 --k 32 --batch-size 4096 \
        --steps 8 --lr 3e-4 --out /tmp/dl
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import numpy as np
import torch


class Batches:
    """The same stream as the SAELens side of bench_batchtopk.py: a fresh permutation per epoch, gathered batches.
    An iterator object, not a generator: with tqdm disabled, trainSAE's norm estimate `yield from`s the stream and
    breaks, which would close a generator and leave the training loop with no data."""

    def __init__(self, x: torch.Tensor, batch: int, seed: int = 0):
        self.x, self.batch, self.g, self.perm, self.i = x, batch, torch.Generator().manual_seed(seed), None, 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self.perm is None or self.i + self.batch > self.x.shape[0]:
            self.perm, self.i = torch.randperm(self.x.shape[0], generator=self.g), 0
        self.i += self.batch
        return self.x[self.perm[self.i - self.batch:self.i]]


def train(x: torch.Tensor, d_sae: int, k: int, batch: int, steps: int, lr: float, aux_coef: float, dead_steps: int,
          seed: int = 0):
    from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer
    from dictionary_learning.training import trainSAE

    class Trainer(BatchTopKTrainer):
        "BatchTopKTrainer with the dead-latent window of the other two sides (its default: 10M tokens)."
        def __init__(self, *a, dead_feature_threshold: int, **kw):
            super().__init__(*a, **kw)
            self.dead_feature_threshold = dead_feature_threshold

    cfg = {"trainer": Trainer, "steps": steps, "activation_dim": x.shape[1], "dict_size": d_sae, "k": k, "layer": 0,
           "lm_name": "bench", "lr": lr, "auxk_alpha": aux_coef, "warmup_steps": 0, "threshold_start_step": 0,
           "seed": seed, "device": "cpu", "dead_feature_threshold": dead_steps * batch}
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):   # trainSAE prints the norm factor
        ae = _train_sae(trainSAE, Batches(x, batch, seed), cfg, steps)
    return time.perf_counter() - t0, ae


def _train_sae(trainSAE, data, cfg, steps):
    "trainSAE builds the trainer itself and returns nothing: catch the trainer to return its SAE."
    made, n_updates = [], [0]
    cls = cfg["trainer"]

    class Catch(cls):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

        def update(self, step, x):
            n_updates[0] += 1
            return super().update(step, x)

    trainSAE(data, [{**cfg, "trainer": Catch}], steps=steps, use_wandb=False, save_dir=None, normalize_activations=True,
             verbose=False, device="cpu")
    if n_updates[0] != steps:
        raise RuntimeError(f"dictionary_learning ran {n_updates[0]} steps instead of {steps}")
    return made[0].ae


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="float32 .npy of the training rows")
    ap.add_argument("--d-sae", type=int, required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--aux-coef", type=float, default=1 / 32)
    ap.add_argument("--dead-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--out", required=True, help="writes OUT.json (timing) and OUT.pt (weights)")
    a = ap.parse_args(argv)
    torch.set_num_threads(int(a.threads or os.cpu_count() or 1))
    import dictionary_learning
    x = torch.from_numpy(np.load(a.data))
    kw = dict(d_sae=a.d_sae, k=a.k, batch=a.batch_size, lr=a.lr, aux_coef=a.aux_coef, dead_steps=a.dead_steps,
              seed=a.seed)
    if not a.no_warmup:   # imports, allocator, thread pool
        train(x[:2 * a.batch_size], steps=2, **kw)
    c0 = time.process_time()
    seconds, ae = train(x, steps=a.steps, **kw)
    cpu = time.process_time() - c0
    with torch.no_grad():
        torch.save({"W_enc": ae.encoder.weight.T.contiguous().clone(), "b_enc": ae.encoder.bias.clone(),
                    "W_dec": ae.decoder.weight.T.contiguous().clone(), "b_dec": ae.b_dec.clone(),
                    "threshold": ae.threshold.float().clone()}, a.out + ".pt")
    with open(a.out + ".json", "w") as f:
        json.dump({"seconds": seconds, "cpu_seconds": cpu, "torch": torch.__version__,
                   "dictionary_learning": dictionary_learning.__version__, "threads": torch.get_num_threads(),
                   "threshold": float(ae.threshold)}, f)


if __name__ == "__main__":
    main()
