"""BatchTopK settings on a real harvest: held-out FVU, L0, dead share, reward R² kept and training seconds for each
setting given as JSON. The numbers behind the `cpu` preset's dictionary settings (chapter 7a's table).

    python experiments/sweep_batchtopk.py STORE LAYER '[{"d": 1152, "k": 64, "bs": 1024, "lr": 6e-3}, ...]'

STORE is an activation store (`rewardsae.activations`), e.g. a run's `stages/activations-base/acts`; its last 10% of
reviews are held out exactly as the pipeline holds them out. Keys per setting: d (latents), k, bs (batch), lr, ep
(epochs, default 1), decay (lr_decay, default 0.2), dt (compute_dtype, default bfloat16).
"""
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from rewardsae.activations import ActivationStore
from rewardsae.batchtopk import train_batchtopk
from rewardsae.pipeline import heldout_split, load_model
from rewardsae.sae_eval import heldout_metrics, reward_signal_check
from rewardsae.scores import token_word_utilities


def main(store_dir: str, layer: int, settings: list[dict], model: str = "smollm2-135m") -> None:
    store = ActivationStore(store_dir)
    split = heldout_split(store, 0.1)
    u = token_word_utilities(store.token_id, store.doc, load_model(model)[1], pos=store.pos)
    x = store.activations(layer)
    print(f"layer {layer}: {split} training tokens, {len(x) - split} held out", flush=True)
    for c in settings:
        t = time.perf_counter()
        sae, _ = train_batchtopk(x[:split], c["d"], k=c["k"], lr=c.get("lr", 3e-3), epochs=c.get("ep", 1),
                                 batch_size=c.get("bs", 512), compute_dtype=c.get("dt", "bfloat16"),
                                 lr_decay=c.get("decay", 0.2), progress=False)
        sec = time.perf_counter() - t
        m, _ = heldout_metrics(sae, x[split:])
        r = reward_signal_check(sae, x[:split], u[:split], x[split:], u[split:])
        print(json.dumps({**c, "seconds": round(sec, 1), "fvu": round(m["fvu"], 4), "l0": round(m["l0"], 1),
                          "dead": round(m["dead_frac"], 3), "raw_r2": round(r["raw_r2"], 3), "kept": round(r["kept"], 3)}),
              flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]))
