"""Activation harvesting: rewardsae.activations.harvest_activations against a plain
`model(..., output_hidden_states=True)` loop over the same IMDb test reviews with SmolLM2-135M, in one process,
same threads, same batch size and max_length; plus harvest's peak memory at N and 4N reviews (subprocesses).

Throughput counts real (non-pad) tokens per second, tokenization included on both sides. The plain loop
keeps the wanted layers' real-token rows in RAM (it has to keep them somewhere); harvest writes them to its
memory-mapped store on disk. Sides:
  plain, dataset order      tokenizer(batch, padding=True) + full model with LM head + output_hidden_states
  plain, length-sorted      the same, over exactly harvest's (longest-first) batches
  harvest resid / mlp       harvest_activations(site=...) for a layer set (stops after its deepest layer)
Repeats are interleaved and each side's best (shortest) repeat is reported.

    python bench/bench_harvest.py --n-docs 64 --mem-docs 48
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_batchtopk import matmul_rates  # noqa: E402
from common import machine, set_threads, table, write_json  # noqa: E402

DEEP = [29]                  # worst case for early stop: every block runs, only the LM head is skipped
MID = [3, 6, 9, 12, 15]      # a 5-layer selection ending at mid-depth
PIPE = [17, 18, 20]          # the layers the cpu preset's reference run analyses (its top 3 by divergence)


def review_texts(n: int, seed: int = 0) -> list[str]:
    "The first `n` IMDb test reviews after a seeded shuffle (as the pipeline samples them)."
    from rewardsae.data import load_imdb
    test = load_imdb("test", verbose=False)
    if n > len(test):
        raise ValueError(f"asked for {n} reviews but the test split has {len(test)}")
    return list(test.shuffle(seed=seed).select(range(n))["text"])


def plain_loop(model, tok, texts, layers, batch_size, max_length, sorted_batches: bool) -> int:
    "The usual way: padded batches through the whole model with output_hidden_states; returns real tokens kept."
    order = list(range(len(texts)))
    if sorted_batches:  # exactly harvest's batches: longest first, by token count
        lens = [len(x) for x in tok(texts, truncation=True, max_length=max_length)["input_ids"]]
        order = [int(i) for i in np.argsort(-np.asarray(lens), kind="stable")]
    kept = {l: [] for l in layers}
    n_tok = 0
    with torch.inference_mode():
        for i in range(0, len(order), batch_size):
            enc = tok([texts[j] for j in order[i:i + batch_size]], padding=True, truncation=True,
                      max_length=max_length, return_tensors="pt")
            out = model(**enc, output_hidden_states=True, use_cache=False)
            real = enc["attention_mask"].bool()
            for l in layers:
                kept[l].append(out.hidden_states[l + 1][real].float().numpy())  # block l's output, real tokens only
            n_tok += int(real.sum())
    for l in layers:
        assert sum(len(a) for a in kept[l]) == n_tok
    return n_tok


def harvest_once(model, tok, texts, layers, batch_size, max_length, site, workdir, keep: str | None = None,
                 compute_dtype: str = "float32") -> int:
    "One harvest into a fresh temp store (deleted afterwards unless `keep` names where to move it)."
    from rewardsae.activations import harvest_activations
    out = Path(tempfile.mkdtemp(dir=workdir)) / "acts"
    try:
        st = harvest_activations(model, tok, texts, layers, out, max_length=max_length, batch_size=batch_size,
                                 site=site, progress=False, compute_dtype=compute_dtype)
        if keep:
            shutil.rmtree(keep, ignore_errors=True)
            out.rename(keep)
        return st.n_tokens
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)


class PeakMemory:
    "Samples /proc/self/status every 10 ms: peak anonymous RSS (memory the process owns) and peak total RSS."

    def __init__(self):
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        for line in Path("/proc/self/status").read_text().splitlines():
            k = line.split(":", 1)[0]
            if k in self.peak:
                self.peak[k] = max(self.peak[k], int(line.split()[1]) * 1024)

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.01)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()


def memory_child(n_docs: int, layers, batch_size: int, max_length: int, site: str, workdir: str,
                 keep: str | None = None) -> dict:
    "Run in a fresh process: load the model, then harvest `n_docs` reviews; peak memory before and during."
    from rewardsae.models import load_causal_lm
    texts = review_texts(n_docs)
    model, tok = load_causal_lm("smollm2-135m")
    base = PeakMemory()
    with base:
        pass
    with PeakMemory() as pm:
        t0 = time.perf_counter()
        n_tok = harvest_once(model, tok, texts, layers, batch_size, max_length, site, workdir, keep)
        seconds = time.perf_counter() - t0
    return {"n_docs": n_docs, "n_tokens": n_tok, "seconds": seconds, "rss_anon_before": base.peak["RssAnon"],
            "rss_file_before": base.peak["RssFile"],
            "peak_rss_anon": pm.peak["RssAnon"], "peak_rss_file": pm.peak["RssFile"], "peak_vmrss": pm.peak["VmRSS"],
            "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "activation_bytes_written": n_tok * len(layers) * model.config.hidden_size * 4}


def _flops_per_token(model) -> tuple[float, float]:
    "Matmul FLOPs per token of one transformer block (2 × its linear weights) and of the LM head."
    block = model.model.layers[0]
    per_block = 2 * sum(m.weight.numel() for m in block.modules() if isinstance(m, torch.nn.Linear))
    return float(per_block), float(2 * model.lm_head.weight.numel())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-docs", type=int, default=64, help="reviews for the throughput comparison")
    ap.add_argument("--mem-docs", type=int, default=64, help="N for the memory runs (N and 4N reviews)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128, help="tokens per review (the CPU preset's 128)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--keep-store", default=None, help="keep the 4N-review memory run's store (mlp, MID layers) here")
    ap.add_argument("--workdir", default=None, help="where temporary stores go (default: a temp folder)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--_mem-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_layers", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    for k in ("n_docs", "mem_docs", "batch_size", "max_length", "repeats"):
        if getattr(a, k) < 1:
            raise SystemExit(f"ValueError: --{k.replace('_', '-')} must be >= 1, got {getattr(a, k)}")
    set_threads(a.threads)
    workdir = a.workdir or tempfile.mkdtemp(prefix="rewardsae-bench-")
    Path(workdir).mkdir(parents=True, exist_ok=True)

    if a._mem_child is not None:
        layers = [int(x) for x in a._layers.split(",")]
        print(json.dumps(memory_child(a._mem_child, layers, a.batch_size, a.max_length, "mlp", workdir, a.keep_store)))
        return {}

    from rewardsae.models import load_causal_lm
    texts = review_texts(a.n_docs)
    model, tok = load_causal_lm("smollm2-135m")
    n_layers = model.config.num_hidden_layers
    print(f"Harvest: SmolLM2-135M ({n_layers} blocks), {a.n_docs} IMDb test reviews, max_length {a.max_length}, "
          f"batch {a.batch_size}, {torch.get_num_threads()} threads", flush=True)
    B, L = a.batch_size, a.max_length
    sides = {
        f"plain, dataset order, layers {MID}": lambda: plain_loop(model, tok, texts, MID, B, L, False),
        f"plain, length-sorted, layers {MID}": lambda: plain_loop(model, tok, texts, MID, B, L, True),
        f"harvest resid, layers {DEEP}": lambda: harvest_once(model, tok, texts, DEEP, B, L, "resid", workdir),
        f"harvest resid, layers {MID}": lambda: harvest_once(model, tok, texts, MID, B, L, "resid", workdir),
        f"harvest mlp, layers {MID}": lambda: harvest_once(model, tok, texts, MID, B, L, "mlp", workdir),
        f"plain, dataset order, layers {PIPE}": lambda: plain_loop(model, tok, texts, PIPE, B, L, False),
        f"harvest mlp, layers {PIPE}": lambda: harvest_once(model, tok, texts, PIPE, B, L, "mlp", workdir),
        f"harvest mlp, layers {PIPE}, bf16 products": lambda: harvest_once(model, tok, texts, PIPE, B, L, "mlp", workdir,
                                                                           compute_dtype="bfloat16"),
    }
    depth = {k: (n_layers if k.startswith("plain") else max(DEEP if "[29]" in k else MID if str(MID) in k else PIPE) + 1)
             for k in sides}
    # warm-up on a few reviews
    plain_loop(model, tok, texts[:B], MID, B, L, False)
    harvest_once(model, tok, texts[:B], MID, B, L, "mlp", workdir)
    harvest_once(model, tok, texts[:B], PIPE, B, L, "mlp", workdir, compute_dtype="bfloat16")
    runs = {k: [] for k in sides}
    peaks = []
    for r in range(a.repeats):
        peaks.append({dt: max(matmul_rates({"2048³": (2048, 2048, 2048), "B·L×d @ d×4d": (B * L, 576, 1536)}, dt).values())
                      for dt in (torch.float32, torch.bfloat16)})
        for name, fn in sides.items():
            t0, c0 = time.perf_counter(), time.process_time()
            n_tok = fn()
            s, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs[name].append({"seconds": s, "cpu_seconds": cpu, "tokens": n_tok, "loadavg_1m": os.getloadavg()[0]})
            print(f"  repeat {r + 1}: {name}: {n_tok} tokens in {s:.1f} s, {cpu:.1f} CPU-s ({n_tok / s:,.0f} tok/s), "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    best = {k: min(v, key=lambda x: x["seconds"]) for k, v in runs.items()}
    ntoks = {v["tokens"] for v in best.values()}
    if len(ntoks) != 1:
        raise RuntimeError(f"the sides saw different numbers of real tokens: {ntoks}")
    ref = best[next(iter(sides))]["seconds"]
    ref_cpu = min(r["cpu_seconds"] for r in runs[next(iter(sides))])
    peak = {dt: max(p[dt] for p in peaks) for dt in (torch.float32, torch.bfloat16)}
    per_block, head = _flops_per_token(model)
    rows = []
    for k, v in best.items():
        flops = v["tokens"] * (per_block * depth[k] + (head if k.startswith("plain") else 0)) / v["seconds"]
        dt = torch.bfloat16 if "bf16" in k else torch.float32
        rows.append({"method": k, "seconds": v["seconds"], "tokens/s": v["tokens"] / v["seconds"],
                     "× plain (dataset order)": ref / v["seconds"],
                     "CPU-s": min(r["cpu_seconds"] for r in runs[k]),
                     "× plain by CPU-s": ref_cpu / min(r["cpu_seconds"] for r in runs[k]),
                     "blocks run": depth[k], "GFLOP/s": flops / 1e9, "% of own peak": 100 * flops / peak[dt]})
    print()
    print(table(rows, ["method", "seconds", "tokens/s", "× plain (dataset order)", "CPU-s", "× plain by CPU-s", "blocks run",
                       "GFLOP/s", "% of own peak"]))
    print(f"matmul peak in this run: fp32 {peak[torch.float32] / 1e9:.0f}, bf16 {peak[torch.bfloat16] / 1e9:.0f} GFLOP/s; "
          f"FLOPs per token: 2 × the linear weights of the blocks run ({per_block / 1e6:.1f} MFLOP a block) + the LM head "
          f"({head / 1e6:.1f} MFLOP) for the plain loop; attention scores left out")
    out = {"bench": "harvest", "machine": machine(), "args": {k: v for k, v in vars(a).items() if not k.startswith("_")},
           "n_tokens": ntoks.pop(), "rows": rows, "all_repeats": runs,
           "matmul_peak_flops": {str(k): v for k, v in peak.items()}}

    del model

    if not a.skip_memory:
        mem = []
        for n in (a.mem_docs, 4 * a.mem_docs):
            cmd = [sys.executable, os.path.abspath(__file__), "--_mem-child", str(n), "--_layers", ",".join(map(str, MID)),
                   "--batch-size", str(B), "--max-length", str(L), "--threads", str(torch.get_num_threads()),
                   "--workdir", workdir] + (["--keep-store", a.keep_store] if a.keep_store and n > a.mem_docs else [])
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                raise RuntimeError(f"memory run with {n} reviews failed:\n{p.stderr[-2000:]}")
            m = json.loads(p.stdout.strip().splitlines()[-1])
            mem.append(m)
            print(f"  memory: {n} reviews, {m['n_tokens']} tokens: peak anon RSS {m['peak_rss_anon'] / 2**20:.0f} MiB "
                  f"(model loaded: {m['rss_anon_before'] / 2**20:.0f} MiB), peak file-backed RSS "
                  f"{m['peak_rss_file'] / 2**20:.0f} MiB, activations written {m['activation_bytes_written'] / 2**20:.0f} MiB",
                  flush=True)
        mrows = [{"reviews": m["n_docs"], "tokens": m["n_tokens"],
                  "activations written (MiB)": m["activation_bytes_written"] / 2**20,
                  "anon RSS after model load (MiB)": m["rss_anon_before"] / 2**20,
                  "peak anon RSS (MiB)": m["peak_rss_anon"] / 2**20,
                  "harvest's own growth (MiB)": (m["peak_rss_anon"] - m["rss_anon_before"]) / 2**20,
                  "file-backed RSS after model load (MiB)": m["rss_file_before"] / 2**20,
                  "peak file-backed RSS (MiB)": m["peak_rss_file"] / 2**20} for m in mem]
        print()
        print(table(mrows, list(mrows[0])))
        out["memory"] = mem
        out["memory_rows"] = mrows
    if not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    if a.json:
        write_json(a.json, out)
    return out


if __name__ == "__main__":
    main()
