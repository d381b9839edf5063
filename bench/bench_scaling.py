"""How each stage's cost grows with its work: every stage of the CPU default timed at three sizes of the quantity that
drives it, on SmolLM2-135M and real IMDb reviews, with a least-squares line `seconds = fixed + per_unit × size` each
(the fixed part: loading, warm-up, set-up). Stages run at the cpu preset's settings, in the machine's measured
precision, one after the other in this process.

| stage | size varied | held fixed |
|---|---|---|
| RL (our GRPO step) | steps | 16 completions of 8-20 tokens a step |
| harvest | tokens | layers [17, 18, 20] (blocks 0-20), 128-token reviews |
| harvest | deepest layer | 16k tokens |
| BatchTopK dictionary | tokens (1 epoch) | 1,152 latents, k 62, batch 1,024 |
| crosscoder | tokens (1 epoch) | 2,304 latents, k 62, batch 1,024 |
| Table 4 | completions per model | 30-token prefixes, 8-20 new tokens |

    python bench/bench_scaling.py            # ~4 min
    python bench/bench_scaling.py --quick    # small sizes, to check it runs
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, set_threads, table, write_json  # noqa: E402

MODEL = "smollm2-135m"


def fit(sizes, seconds) -> tuple[float, float, float]:
    "`(fixed, per_unit, r2)` of the least-squares line through (size, seconds)."
    x, y = np.asarray(sizes, float), np.asarray(seconds, float)
    b, a = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (a + b * x)) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
    return float(a), float(b), float(r2)


def reviews(n: int) -> list[str]:
    from rewardsae.data import load_imdb
    return list(load_imdb("test", verbose=False)["text"][:n])


def time_rl(steps: int, work: Path) -> float:
    from rewardsae import rlhf
    from rewardsae.grpo import train_grpo
    from rewardsae.models import load_causal_lm
    from rewardsae.precision import compute_dtype, resolve_dtype
    t0 = time.perf_counter()
    cfg = rlhf.preset("cpu", steps=steps, compute_dtype=compute_dtype())
    model, tok = load_causal_lm(cfg.model)
    prompts = rlhf.make_prompts(tok, steps * cfg.prompts_per_step, seed=0)["prompt"]
    train_grpo(model, tok, prompts, rlhf.reward_function("utility"), cfg, work / f"rl{steps}",
               dtype=resolve_dtype(cfg.compute_dtype))
    return time.perf_counter() - t0


def time_harvest(n_tokens: int, layers: list[int], work: Path, texts: list[str]) -> tuple[float, int]:
    from rewardsae.activations import harvest_activations
    from rewardsae.models import load_causal_lm
    t0 = time.perf_counter()
    model, tok = load_causal_lm(MODEL)
    n_docs = max(1, n_tokens // 128)      # long test reviews: ~128 tokens each at max_length 128
    store = harvest_activations(model, tok, texts[:n_docs], layers, work / f"h{n_tokens}-{'-'.join(map(str, layers))}", max_length=128,
                                batch_size=16, progress=False, compute_dtype="auto")
    return time.perf_counter() - t0, int(store.n_tokens)


def time_dictionary(kind: str, n_tokens: int, x: np.ndarray, x2: np.ndarray) -> float:
    t0 = time.perf_counter()
    if kind == "batchtopk":
        from rewardsae.batchtopk import train_batchtopk
        train_batchtopk(x[:n_tokens], 1152, k=62, lr=6e-3, epochs=1, batch_size=1024, progress=False, compute_dtype="auto")
    else:
        from rewardsae.crosscoder import train_crosscoder
        train_crosscoder(x[:n_tokens], x2[:n_tokens], 2304, k=62, lr=1e-3, epochs=1, batch_size=1024, progress=False,
                         compute_dtype="auto")
    return time.perf_counter() - t0


def time_table4(n: int, work: Path) -> float:
    from rewardsae.rlhf import evaluate_completions
    t0 = time.perf_counter()
    evaluate_completions(MODEL, MODEL, n=n, with_sentiment=False, out_dir=work / f"t4-{n}")
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    set_threads(a.threads)
    q = a.quick
    sizes = {"rl": [1, 2, 3] if q else [2, 4, 8],
             "harvest_tokens": [2048, 4096, 8192] if q else [8192, 16384, 32768],
             "harvest_layer": [5, 10, 20],
             "dictionary_tokens": [8192, 16384, 32768] if q else [32768, 65536, 131072],
             "table4": [4, 8, 16] if q else [10, 20, 40]}
    from rewardsae.precision import compute_dtype
    print(f"precision: {compute_dtype()}", flush=True)
    texts = [t for t in reviews(3000) if len(t) > 700]
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)

        def line(stage, unit, xs, ys, note=""):
            a0, b, r2 = fit(xs, ys)
            raw[stage] = {"sizes": list(xs), "seconds": list(ys)}
            rows.append({"stage": stage, "size": unit, "sizes": ", ".join(f"{v:,}" for v in xs),
                         "seconds": ", ".join(f"{v:.1f}" for v in ys), "fixed s": a0, "s per unit": b, "R²": r2,
                         "note": note})
            print(f"{stage}: " + ", ".join(f"{x:,} {unit} {y:.1f} s" for x, y in zip(xs, ys)), flush=True)

        line("RL (our GRPO step)", "steps", sizes["rl"], [time_rl(s, work) for s in sizes["rl"]])
        hv = [time_harvest(n, [17, 18, 20], work, texts) for n in sizes["harvest_tokens"]]
        line("harvest, layers 17/18/20", "tokens", [t for _, t in hv], [s for s, _ in hv])
        n16 = sizes["harvest_tokens"][1]
        hl = [time_harvest(n16, [layer], work, texts)[0] for layer in sizes["harvest_layer"]]
        line(f"harvest, {n16:,} tokens", "deepest layer", sizes["harvest_layer"], hl, "blocks after it are not run")
        from rewardsae.activations import ActivationStore
        base = np.asarray(ActivationStore(work / f"h{sizes['harvest_tokens'][-1]}-17-18-20").activations(18), dtype=np.float32)
        reps = -(-sizes["dictionary_tokens"][-1] // len(base))
        x = np.tile(base, (reps, 1))        # the harvest's rows, cycled: a step costs the same whatever the rows hold
        rng = np.random.default_rng(0)
        x2 = x + 0.1 * rng.standard_normal(x.shape).astype(np.float32) * x.std()   # a stand-in for the tuned model's rows
        n_dict = [min(n, len(x)) for n in sizes["dictionary_tokens"]]
        time_dictionary("batchtopk", n_dict[0] // 2, x, x2)          # warm-up
        line("BatchTopK dictionary", "tokens", n_dict, [time_dictionary("batchtopk", n, x, x2) for n in n_dict],
             f"1 epoch; the harvest's {len(base):,} rows cycled")
        line("crosscoder", "token pairs", n_dict, [time_dictionary("crosscoder", n, x, x2) for n in n_dict], "1 epoch")
        line("Table 4", "completions per model", sizes["table4"], [time_table4(n, work) for n in sizes["table4"]])
    print()
    print(table(rows, ["stage", "size", "sizes", "seconds", "fixed s", "s per unit", "R²", "note"]))
    if a.json:
        write_json(a.json, {"machine": machine(), "args": vars(a), "rows": rows, "raw": raw})


if __name__ == "__main__":
    main()
