"The causal test (chapter 12b): steering, projection and ablation per row, shared-noise sampling, gain fractions, and a fixed-vector organism whose answer is known."
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from rewardsae.causal import (SharedNoise, causal_conditions, causal_section, check_alphas, gain_fraction, generate_rows,
                              row_edits, run_conditions, stage_causal, summarise)
from rewardsae.models import load_causal_lm, mlp

LAYER = 2


@pytest.fixture(scope="module")
def organism():
    "tiny-neox and a tuned copy whose layer-2 MLP adds a fixed vector v (its output bias): δ at that MLP output is v."
    base, tok = load_causal_lm("tiny-neox")
    tuned = copy.deepcopy(base)
    v = torch.randn(base.config.hidden_size, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        mlp(tuned, LAYER).dense_4h_to_h.bias += v
    return base, tuned, tok, v


def _mlp_out(model, enc, layer=LAYER):
    got = []
    h = mlp(model, layer).register_forward_hook(lambda m, i, o: got.append(o.detach()))
    with torch.no_grad():
        logits = model(**enc).logits
    h.remove()
    return got[0], logits


def test_steering_the_base_with_delta_gives_the_tuned_models_logits_and_completions(organism):
    base, tuned, tok, v = organism
    enc = tok(["the film was a great", "a slow and dull story about"], return_tensors="pt", padding=True)
    hb, _ = _mlp_out(base, enc)
    ht, logits_t = _mlp_out(tuned, enc)
    delta = (ht - hb)[enc["attention_mask"].bool()].mean(0)            # the mean activation difference
    assert torch.allclose(delta, v, atol=1e-5)
    with row_edits(base, {(LAYER, "mlp"): {"add": delta.expand(2, -1)}}):
        _, logits_s = _mlp_out(base, enc)
    assert torch.allclose(logits_s, logits_t, atol=1e-4)
    _, logits_b = _mlp_out(base, enc)
    with row_edits(tuned, {(LAYER, "mlp"): {"add": -delta.expand(2, -1)}}):   # removal by subtraction: back to the base
        _, logits_r = _mlp_out(tuned, enc)
    assert torch.allclose(logits_r, logits_b, atol=1e-4)
    prefixes = ["the film was", "I did not like", "a great"]
    steered, *_ = generate_rows(base, tok, prefixes, [0, 1, 2], {(LAYER, "mlp"): {"add": v.expand(3, -1)}}, seed=3)
    plain, *_ = generate_rows(tuned, tok, prefixes, [0, 1, 2], seed=3)
    unsteered, *_ = generate_rows(base, tok, prefixes, [0, 1, 2], seed=3)
    assert steered == plain and unsteered != plain


def test_row_edits_touch_only_their_rows(organism):
    from rewardsae.probes import ablate_features
    from rewardsae.sae import SparseAutoencoder
    base, _, tok, v = organism
    enc = tok(["the film was a great film"] * 3, return_tensors="pt")
    h0, _ = _mlp_out(base, enc)
    u = torch.nn.functional.normalize(v, dim=0)
    proj = torch.stack([u, torch.zeros_like(u), torch.zeros_like(u)])
    sae = SparseAutoencoder(base.config.hidden_size, 128, seed=0)
    mask = np.zeros((3, 128), bool)
    mask[2, [1, 5, 9]] = True
    with row_edits(base, {(LAYER, "mlp"): {"project": proj, "ablate": [(sae, mask)]}}):
        h1, _ = _mlp_out(base, enc)
    assert (h1[0] @ u).abs().max() < 1e-4 and (h0[0] @ u).abs().max() > 1e-2     # row 0: v's direction removed
    assert torch.allclose(h1[1], h0[1])                                              # row 1: untouched
    with ablate_features(base, {LAYER: sae}, {LAYER: [1, 5, 9]}):
        ha, _ = _mlp_out(base, enc)
    assert torch.allclose(h1[2], ha[2], atol=1e-5) and not torch.allclose(h1[2], h0[2])   # row 2: as probes.ablate_features


def test_shared_noise_samples_the_softmax_and_is_shared_by_prefix():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1])).expand(20000, 3)
    noise = SharedNoise(range(20000), 20000, prompt_len=5, seed=0)
    picks = noise(torch.zeros(20000, 7, dtype=torch.long), logits).argmax(-1)
    freq = np.bincount(picks.numpy(), minlength=3) / 20000
    assert np.allclose(freq, [0.7, 0.2, 0.1], atol=0.01)
    two = SharedNoise([4, 1, 4], 6, prompt_len=5, seed=0)(torch.zeros(3, 6, dtype=torch.long), torch.zeros(3, 50))
    assert torch.equal(two[0], two[2]) and not torch.equal(two[0], two[1])       # same prefix, same step: same noise


def test_gain_fraction_by_hand():
    f, lo, hi = gain_fraction([0, 0], [1, 1], [0, 0], [2, 2])
    assert (f, lo, hi) == (0.5, 0.5, 0.5)
    f, lo, hi = gain_fraction([0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 2, 3, 2])   # 4 / 8
    assert f == 0.5 and 0.33 < lo < 0.5 < hi < 1.0
    removed = gain_fraction([1, 1, 1, 1], [1, 2, 3, 2], [0, 0, 0, 0], [1, 2, 3, 2])[0]   # tuned − removed: 4 of 8
    assert removed == 0.5
    with pytest.raises(ValueError, match="differ in length"):
        gain_fraction([0], [1, 2], [0, 0], [1, 1])


def test_conditions_and_summary_of_a_planted_table():
    conds = causal_conditions({"d": (1, "mlp", np.ones(4))}, {}, alphas=[1.0, 2.0], n_random=3, seed=0)
    names = [c["name"] for c in conds]
    assert names[:2] == ["base", "tuned"] and len(names) == 2 + 2 * 4 + 1 + 3
    rand = [c["edits"][0][3] for c in conds if c["name"].startswith("d|random") and c["name"].endswith("|steer|1")]
    assert np.allclose(np.linalg.norm(rand, axis=1), 2.0)                         # equal norm to the candidate
    # rewards by hand: base 0, tuned 2, steer at α=1 → 1 (half), α=2 → 2 (all), random 0; projection removes all, random nothing
    reward = {"base": 0, "tuned": 2, "d|steer|1": 1, "d|steer|2": 2, "d|remove": 0}
    df = pd.DataFrame([{"condition": n, "prefix": i, "reward": float(reward.get(n, 0 if "steer" in n else 2))}
                       for n in names for i in range(5)])
    s = summarise(df, conds)
    st = {r["alpha"]: r for r in s["candidates"]["d"]["steer"]}
    assert st[1.0]["recovered"] == [0.5, 0.5, 0.5] and st[2.0]["recovered"][0] == 1.0 and st[1.0]["random_recovered"][0] == 0
    rm = s["candidates"]["d"]["remove"]
    assert rm["removed"][0] == 1.0 and rm["random_removed"][0] == 0 and rm["beyond_random"][0] == 1.0
    sub = causal_conditions({"d": (1, "mlp", np.ones(4))}, {}, alphas=[1.0], n_random=3, seed=0, removal="subtract")
    minus = {c["name"]: c["edits"][0] for c in sub if c["name"].endswith("|remove")}
    assert sorted(minus) == ["d|random0|remove", "d|random1|remove", "d|random2|remove", "d|remove"]
    assert minus["d|remove"][2] == "add" and np.allclose(minus["d|remove"][3], -1)
    assert np.allclose(minus["d|random0|remove"][3], -[c for c in sub if c["name"] == "d|random0|steer|1"][0]["edits"][0][3])
    with pytest.raises(ValueError, match="removal must be 'project' or 'subtract'"):
        causal_conditions({"d": (1, "mlp", np.ones(4))}, {}, [1.0], removal="zero")
    text = causal_section({**s, "n_random": 3})
    assert "recovers 50% [50%, 50%] of the gain" in text and "nan" not in text.lower()


def test_bad_input_is_refused_in_one_line_before_any_work(tmp_path):
    from rewardsae.pipeline import make_params
    p = make_params(model="tiny-neox", preset="smoke", out=str(tmp_path / "r"))
    v = np.ones(64)
    with pytest.raises(ValueError, match=r"candidate 'd': steering layer 9 is outside the model \(blocks 0..3\)"):
        stage_causal(p, tmp_path, None, {"d": (9, "mlp", v)})
    with pytest.raises(ValueError, match="alphas must be finite numbers, got 'strong'"):
        stage_causal(p, tmp_path, None, {"d": (1, "mlp", v)}, alphas=[1.0, "strong"])
    with pytest.raises(ValueError, match=r"the vector must be 64 finite numbers"):
        stage_causal(p, tmp_path, None, {"d": (1, "mlp", np.ones(3))})
    assert check_alphas(2) == [2.0]
    assert not (tmp_path / "stages").exists()


def test_stage_end_to_end_on_the_organism(organism, tmp_path):
    from rewardsae.pipeline import make_params, stage_policy
    from rewardsae.sae import SparseAutoencoder, save_sae
    base, tuned, tok, v = organism
    tuned.save_pretrained(tmp_path / "tuned")
    tok.save_pretrained(tmp_path / "tuned")
    sae = SparseAutoencoder(base.config.hidden_size, 128, seed=0)
    save_sae(sae, tmp_path / "sae-stage" / "sae")
    np.save(tmp_path / "sae-stage" / "freq.npy", np.linspace(0.01, 0.2, 128))
    run = tmp_path / "run"
    p = make_params(model="tiny-neox", preset="smoke", tuned=str(tmp_path / "tuned"), out=str(run))
    policy = stage_policy(p, run)
    kw = dict(directions={"delta": (LAYER, "mlp_out", v.numpy())},
              latent_sets={"top": (LAYER, tmp_path / "sae-stage", [1, 5, 9], [1.0, 0.5, 0.5])},
              alphas=(1.0,), n_prefixes=4, n_random=3, batch_rows=32, n_boot=200)
    st = stage_causal(p, run, policy, **kw)
    comp = pd.read_csv(st.folder / "completions.csv", keep_default_na=False).pivot(index="prefix", columns="condition", values="completion")
    assert (comp["delta|steer|1"] == comp["tuned"]).all() and (comp["base"] != comp["tuned"]).any()
    r = st.result
    assert set(r["candidates"]) == {"delta", "top", "top (direction)"} and r["candidates"]["top"]["n_latents"] == 3
    assert r["n_conditions"] == 2 + 4 + 1 + 3 + 4 + 1 + 4 and (st.folder / "causal_steering.png").exists()
    gain = r["rl_gain"][0]
    assert gain == 0 or r["candidates"]["delta"]["steer"][0]["recovered"][0] == pytest.approx(1.0)
    assert "nan" not in causal_section(r).lower()
    assert stage_causal(p, run, policy, **kw).reused
