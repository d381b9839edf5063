"What RL fine-tuning changed (chapters 8c-8e): known answers planted in copies of tiny-neox, and the stage end to end."
import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from rewardsae.activation_diff import (DeltaProfile, changed_layers, cosine, fixed_vector_copy, latent_shifts, steering)
from rewardsae.models import load_causal_lm
from rewardsae.output_diff import (amplification_scores, check_same_tokenizer, contrast_samples, diff_mining_topk,
                                   direction_lens, logit_bias_copy, logit_lens, paired_batches, rank_tokens,
                                   relevance_verdict, token_relevance, token_valence, topk_counts)
from rewardsae.what_changed import diff_corpus, kl_by_token, method_entry, frequency_baseline

TEXTS = ["the film was great and the acting was good", "a bad movie, boring and far too long",
         "I liked the story of the sea and the sky", "this is the worst film I have seen this year"] * 3


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-neox")


def _mining_and_amplification(base, tuned, tok, k=5):
    topk = np.concatenate([diff_mining_topk(b["logp_tuned"][b["mask"]], b["logp_base"][b["mask"]], k).numpy()
                           for b in paired_batches(base, tuned, tok, TEXTS, batch_size=4)])
    s = contrast_samples(base, tuned, tok, TEXTS[:4], [-1, 0, 2.0], max_new_tokens=12, seed=0)
    return topk_counts(topk, len(tok)), amplification_scores(s, 2.0, len(tok)), s


def test_a_logit_bias_on_one_token_is_ranked_first(tiny):
    base, tok = tiny
    t = tok.encode(" good")[0]
    tuned = logit_bias_copy(base, t, 2.0)
    counts, amp, s = _mining_and_amplification(base, tuned, tok)
    n_ctx = sum(len(x) for x in tok(TEXTS)["input_ids"])
    # the bias raises log p of t alone (every other token's log p falls): t is in every context's list, nothing else is
    assert rank_tokens(counts, 1) == [t] and counts[t] == n_ctx and counts.sum() == n_ctx
    assert rank_tokens(amp, 1) == [t] and amp[t] > 0
    # the same noise drives every alpha: where the samples differ from the base model's, they drew t
    assert (s[2.0] == t).sum() > (s[0.0] == t).sum() >= (s[-1.0] == t).sum() == 0
    assert (s[2.0][s[2.0] != s[-1.0]] == t).all() and (s[2.0] != s[-1.0]).any()


def test_a_fixed_vector_at_one_layer_is_recovered_by_delta_and_steering_reproduces_the_tuned_logits(tiny):
    base, tok = tiny
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    tuned = fixed_vector_copy(base, 2, v)
    prof = DeltaProfile(4, 64, n_pos=2, lens_tokens=40)
    for b in paired_batches(base, tuned, tok, TEXTS, batch_size=4):
        prof.update(b, base, tuned)
    p = prof.profile()
    assert changed_layers(p)["first"] == 2
    assert (p[p.layer < 2].rel_change == 0).all() and (p[p.layer < 2].lens_kl.abs() < 1e-6).all()
    d = prof.deltas()
    assert cosine(d[2, -1], v) > 0.9 and np.allclose(d[2, -1], v.numpy(), atol=1e-5)   # v is added at every position
    enc = tok(TEXTS[:4], return_tensors="pt", padding=True)
    with torch.no_grad(), steering(base, 2, d[2, -1]):
        steered = base(**enc).logits
    with torch.no_grad():
        assert (steered - tuned(**enc).logits).abs().max() < 1e-4
        assert (base(**enc).logits - tuned(**enc).logits).abs().max() > 1e-2   # the hook is gone again
    # the logit lens of block 3's output is the model's own output (final norm, then unembedding)
    with torch.no_grad():
        out = base(**enc, output_hidden_states=False).logits
        b = next(iter(paired_batches(base, base, tok, TEXTS[:4], batch_size=4)))
    assert torch.allclose(torch.log_softmax(logit_lens(base, b["resid_base"][3]), -1)[b["mask"]], b["logp_base"][b["mask"]], atol=1e-4)
    assert out.shape[-1] == len(tok)


def test_a_copy_with_no_change_reports_nothing_above_its_floor(tiny):
    base, tok = tiny
    same = copy.deepcopy(base)
    d = diff_corpus(base, same, tok, TEXTS, batch_size=4, n_pos=2, lens_tokens=30, top_k=5, act_layers=[1])
    V = len(tok)
    assert np.abs(d["deltas"]).max() == 0 and np.abs(d["kl"]).max() < 1e-6 and (d["topk"] == -1).all()
    _, amp, _ = _mining_and_amplification(base, same, tok)
    base_list = frequency_baseline(d["token"], tok, V, 5)
    xb, xt = d["acts"][1]
    enc = lambda x: torch.relu(x @ torch.eye(64))
    shifts = latent_shifts(enc, xb, xt)
    for scores, floor in ((direction_lens(same, torch.as_tensor(d["deltas"][1, -1])).numpy(), np.zeros(V)),
                          (topk_counts(d["topk"], V), topk_counts(d["floor_topk"], V)), (amp, np.zeros(V)),
                          (kl_by_token(d["kl"], d["token"], V), np.zeros(V)), (np.zeros(V) + shifts["shift"].abs().max(), np.zeros(V))):
        e = method_entry(scores, floor, tok, base_list, 5)
        assert e["n_signal"] == 0 and e["top_tokens"] == e["floor_tokens"] and not e["relevance"]["relevant"]


def test_latent_shift_matches_a_hand_computation():
    g = np.random.default_rng(0)
    xb = g.normal(size=(50, 4)).astype(np.float32)
    xt = xb + np.array([1.0, 0, 0, -1.0], dtype=np.float32)
    df = latent_shifts(lambda x: torch.relu(x), xb, xt, batch_size=16).set_index("latent")
    want = np.maximum(xt, 0).mean(0) - np.maximum(xb, 0).mean(0)
    assert np.allclose(df["shift"].sort_index().to_numpy(), want, atol=1e-6)
    assert df.index[0] == 0 and df.index[-1] == 3 and df.loc[0, "freq_tuned"] == (xt[:, 0] > 0).mean()


def test_relevance_counts_vader_words_and_follows_its_rule():
    assert token_valence(" great") == pytest.approx(3.1) and token_valence(" the") == 0 and token_valence("greatness?") == 0
    r = token_relevance([" great", " good", " the", " bad"])
    assert (r["n_positive"], r["share_positive"]) == (2, 0.5) and r["mean_valence"] == pytest.approx((3.1 + 1.9 - 2.5) / 4)
    none = token_relevance([" the"] * 20)
    assert relevance_verdict(token_relevance([" great"] * 6 + [" the"] * 14), none, none)["relevant"]
    assert not relevance_verdict(token_relevance([" great"] + [" the"] * 19), none, none)["relevant"]   # p = 0.33


def test_bad_input_is_named_before_any_work(tiny, tmp_path):
    base, tok = tiny
    with pytest.raises(ValueError, match="steer_layer=7 is not a block"):
        with steering(base, 7, np.zeros(64)):
            pass
    with pytest.raises(ValueError, match="alpha must be a finite number, got 'big'"):
        contrast_samples(base, base, tok, ["a"], [-1, "big"])
    other, _ = load_causal_lm("tiny-neox")
    from transformers import AutoTokenizer
    from rewardsae.models import builtin_path
    t2 = AutoTokenizer.from_pretrained(builtin_path("tiny-neox"))
    t2.add_tokens(["zzqx"])
    with pytest.raises(ValueError, match="tuned: the tuned model's tokenizer differs"):
        check_same_tokenizer(tok, t2)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    "A run of tiny-neox against a copy that adds v to block 2's MLP output: activations, a base SAE and a crosscoder at block 2."
    from rewardsae.crosscoder import BatchTopKCrosscoder, save_crosscoder
    from rewardsae.pipeline import make_params, stage_activations, stage_policy, stage_sae
    from rewardsae.stages import cached_stage
    root = tmp_path_factory.mktemp("wc")
    base, tok = load_causal_lm("tiny-neox")
    v = torch.randn(64, generator=torch.Generator().manual_seed(2)) * 0.3
    fixed_vector_copy(base, 2, v).save_pretrained(root / "tuned")
    tok.save_pretrained(root / "tuned")
    run = root / "run"
    p = make_params(model="tiny-neox", tuned=str(root / "tuned"), preset="smoke", n_docs=16, max_length=32, sae_arch="batchtopk",
                    topk_k=8, compute_dtype="float32", out=str(run))
    pol = stage_policy(p, run)
    div = cached_stage(run, "divergence", {"fake": 1}, lambda f: {"selected_layers": [2], "layers": []}, log=None)
    acts = {r: stage_activations(p, run, r, pol, div) for r in ("base", "rlhf")}
    saes = {("base", 2, "large", 0): stage_sae(p, run, acts["base"], "base", 2, "large", 0)}
    md = cached_stage(run, "model_diff", {"fake": 1}, lambda f: (save_crosscoder(BatchTopKCrosscoder(64, 128, k=8, seed=0),
                                                                                 f / "crosscoder-L2"), {})[1], log=None)
    return p, run, pol, acts, saes, md, v


def test_stage_end_to_end_recovers_the_planted_vector(tiny_run):
    from rewardsae.what_changed import stage_what_changed, what_changed_section
    p, run, pol, acts, saes, md, v = tiny_run
    kw = dict(n_reviews=6, n_prompts=8, n_prefixes=3, max_length=24, new_tokens=4, lens_tokens=32, top_k=20)
    with pytest.raises(ValueError, match="steer_layer=9 is not a block"):
        stage_what_changed(p, run, pol, acts, saes, md, steer_layer=9, **kw)
    with pytest.raises(ValueError, match="steer_alpha must be a finite number"):
        stage_what_changed(p, run, pol, acts, saes, md, steer_alpha="x", **kw)
    with pytest.raises(ValueError, match="top_k=400 is more than the reviews corpus gives: 144 token positions"):
        stage_what_changed(p, run, pol, acts, saes, md, **{**kw, "top_k": 400})
    st = stage_what_changed(p, run, pol, acts, saes, md, steer_layer=2, **kw)
    r = st.result
    assert r["profile"]["reviews"]["first_changed_layer"] == 2 == r["profile"]["prompts"]["first_changed_layer"]
    d = np.load(st.folder / "deltas-reviews.npy")
    assert d.shape == (4, 6, 64) and cosine(d[2, -1], v) > 0.99 and np.abs(d[:2]).max() == 0
    assert set(r["methods"]) == {"adl", "diff_mining", "amplification", "kl", "latent_shift_sae", "latent_shift_crosscoder"}
    assert all(len(e["top_tokens"]) == 20 and "relevance" in e and e["causal"] is None for e in r["methods"].values())
    # the SAE ranking on held-out rows: by hand from the stores (the tuned MLP output is the base's + v)
    sh = pd.read_csv(st.folder / "latent_shifts-sae-L2-reviews.csv")
    from rewardsae.batchtopk import load_any_sae
    from rewardsae.pipeline import activation_store, heldout_split
    sae = load_any_sae(saes[("base", 2, "large", 0)].folder / "sae")
    sb = activation_store(acts["base"])
    xb = torch.tensor(np.asarray(sb.activations(2)[heldout_split(sb, p.heldout_frac):]))
    with torch.no_grad():
        want = (sae.encode(xb + v) - sae.encode(xb)).mean(0).numpy()
    assert np.allclose(sh.set_index("latent")["shift"].sort_index().to_numpy(), want, atol=1e-4)
    for f in ("latent_shifts-crosscoder-L2-prompts.csv", "top_tokens.csv", "what_changed_profile.png", "what_changed_tokens.png"):
        assert (st.folder / f).exists()
    md_text = what_changed_section(r, p)
    assert md_text.startswith("\n## What fine-tuning changed") and "nan" not in md_text and "Activation Difference Lens" in md_text
    assert stage_what_changed(p, run, pol, acts, saes, md, steer_layer=2, **kw).reused
