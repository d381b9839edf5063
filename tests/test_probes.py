"Feedback probes (the paper's later version): contrast sentences, last-position features, probe targets, Kendall tau vs a random probe."
import numpy as np
import pandas as pd
import pytest
import torch

from rewardsae.probes import contrast_sentences, fit_probe, last_position_features, probe_targets, to_vader_range, word_valences


class OneTokenPerWord:
    "A tokenizer stand-in: every word is one token except those listed as split."
    def __init__(self, split=()):
        self.split = set(split)
    def __call__(self, text, add_special_tokens=False):
        ids = [0, 1] if text.strip() in self.split else [0]
        return type("E", (), {"input_ids": ids})()


TABLE = {"great": 3.1, "superb": 2.9, "terrible": -2.1, "awful": -2.5, "nice": 1.8, "bad": -2.5, "good": 1.9}


def test_contrast_sentences_from_a_hand_made_corpus():
    texts = ["A great film. Then more.", "The acting was superb!", "Great start but awful end.", "Nice and bad.",
             "Nothing here.", "good fun"] * 2
    df = contrast_sentences(OneTokenPerWord(), texts=texts, table=TABLE, min_sentences=2, seed=0)
    # strong positive = top quartile of positive valences (>= 2.95: great 3.1 only... superb 2.9 is below): only "great";
    # "Great start but awful end." has a strong negative word and is skipped; "good" and "nice" are not strong
    q = np.percentile([3.1, 2.9, 1.8, 1.9], 75)
    assert q == pytest.approx(2.95)
    assert df.word.tolist() == ["great", "great"] and df.pos_text.tolist() == ["A great", "A great"]
    assert all(t == "A " + w for t, w in zip(df.neg_text, df.neg_word)) and set(df.neg_word) <= {"terrible", "awful", "bad"}
    assert all(t == "A " + w for t, w in zip(df.neu_text, df.neu_word)) and not set(df.neu_word) & set(TABLE)
    with pytest.raises(ValueError, match=r"only 2 contrast sentences found \(need 10\)"):
        contrast_sentences(OneTokenPerWord(), texts=texts, table=TABLE, min_sentences=10)
    with pytest.raises(ValueError, match="0 strongly positive"):
        contrast_sentences(OneTokenPerWord(split={"great"}), texts=texts, table=TABLE, min_sentences=1)


def test_probe_targets_and_mapping_by_hand():
    X, y = probe_targets([[3.0, 4.0]], [[0.0, 1.0]], [[0.0, 0.0]])
    assert X.tolist() == [[3.0, 4.0], [0.0, 1.0]] and y.tolist() == [5.0, -1.0]
    m = to_vader_range(np.arange(11.0))          # 10th-90th percentile = 1..9 -> -4..4, the ends clamped
    assert m[1] == -4 and m[9] == 4 and m[5] == 0 and m[0] == -4 and m[10] == 4
    words, vals = word_valences(pd.DataFrame({"word": ["great"], "neg_word": ["awful"]}), TABLE)
    assert words.tolist() == ["great", "awful"] and vals.tolist() == [3.1, -2.5]


def test_probe_recovers_a_planted_linear_target_and_beats_random():
    g = np.random.default_rng(1)
    X = g.normal(size=(500, 20))
    y = X @ g.normal(size=20)
    words = np.array([f"w{i}" for i in range(500)])
    s, table = fit_probe(X, y, words, y, seed=0)
    assert s["tau"] > 0.95 and s["tau_ci"][0] > 0.9 and s["sign_acc_pos"] > 0.9 and s["sign_acc_neg"] > 0.9
    assert s["random_tau_ci"][0] < 0.2 and abs(s["random_tau_mean"]) < 0.15 and 95 <= s["n_test"] <= 105
    noise, _ = fit_probe(X, g.normal(size=500), words, y, seed=0)
    assert abs(noise["tau"]) < 0.2                # a target unrelated to the valences: no rank agreement
    with pytest.raises(ValueError, match="too few to score"):
        fit_probe(X[:10], y[:10], words[:10], y[:10])


def test_kendall_tau_on_a_hand_checked_list():
    from rewardsae.probes import _word_tau
    # probe order 1,2,3,4 vs valence order 1,2,4,3: 5 concordant and 1 discordant pair -> tau = 4/6
    tau, table = _word_tau([1.0, 2.0, 3.0, 4.0], ["a", "b", "c", "d"], [1.0, 2.0, 4.0, 3.0])
    assert tau == pytest.approx(4 / 6) and len(table) == 4
    # the same word twice is averaged before ranking
    tau2, t2 = _word_tau([1.0, 3.0, 2.0], ["a", "a", "b"], [0.0, 0.0, 1.0])
    assert t2.probe.tolist() == [2.0, 2.0] and np.isnan(tau2)


def test_last_position_features_take_the_last_real_token():
    from rewardsae.models import load_causal_lm
    model, tok = load_causal_lm("tiny-neox")
    class Identity:
        def encode(self, x): return x
    texts = ["a great film", "so"]
    both = last_position_features(model, tok, {1: Identity()}, texts, batch_size=2)   # "so" is padded in this batch
    alone = last_position_features(model, tok, {1: Identity()}, ["so"], batch_size=1)
    assert both.shape == (2, model.config.hidden_size)
    assert np.allclose(both[1], alone[0], atol=1e-5)
    two = last_position_features(model, tok, {1: Identity(), 3: Identity()}, texts)
    assert two.shape == (2, 2 * model.config.hidden_size) and np.allclose(two[:, :model.config.hidden_size], both, atol=1e-5)
    # the forward pass stops after layer 3: a full pass through all blocks gives the same rows; bf16 autocast is close
    full = {}
    h = model.gpt_neox.layers[3].mlp.register_forward_hook(lambda m, i, o: full.setdefault("x", o))
    enc = tok(texts[:1], return_tensors="pt")
    model(**enc)
    h.remove()
    first = last_position_features(model, tok, {3: Identity()}, texts[:1])
    assert np.allclose(first[0], full["x"][0, -1].detach().numpy(), atol=1e-5)
    low = last_position_features(model, tok, {1: Identity(), 3: Identity()}, texts, compute_dtype="bfloat16")
    rel = np.linalg.norm(low - two) / np.linalg.norm(two)
    assert 0 < rel < 0.05


def test_reward_related_rule():
    from rewardsae.probes import reward_related
    t = {"great": 3.1, "like": 2.0, "ok": 0.9}
    assert reward_related('Fires on "great" (mean 2.0, 5% of activation), "the" (mean 1.0, 3%).', "tokens", t)
    assert not reward_related('Fires on "ok" (mean 2.0), "the" (mean 1.0).', "tokens", t)      # |0.9| < 1
    assert not reward_related('Fires on "the", great words', "tokens", t)                     # only quoted tokens count
    assert reward_related("Positive remarks about the acting", "local", t)                     # a sentiment word
    assert not reward_related("Words like 'the' and 'a'", "local", t)                          # "like" is a meta word
    assert not reward_related("", "local", t) and not reward_related(float("nan"), "tokens", t)


def test_flag_features_and_columns():
    from rewardsae.probes import feature_columns, flag_features
    ex = pd.DataFrame({"seed": [0, 0, 0, 1], "rank": [1, 2, 31, 1], "layer": [3, 3, 3, 3], "large_idx": [5, 6, 7, 8],
                       "small_idx": [1, 2, 3, 4], "status": ["ok", "dead", "ok", "ok"],
                       "description": ['"great"', '"great"', '"great"', '"great"']})
    f = flag_features(ex, "tokens", k=30)
    assert f.flagged.tolist() == [True, False]          # rank 31 and seed 1 left out; a dead feature is never flagged
    assert feature_columns({3: 4, 5: 10}, {5: [2, 0], 3: [1]}).tolist() == [1, 4, 6]


def test_validation_finds_the_features_that_carry_a_planted_target():
    from rewardsae.probes import validate_probe
    g = np.random.default_rng(0)
    X = np.abs(g.normal(size=(400, 12))) * (g.random((400, 12)) < 0.5)
    sign = np.where(np.arange(400) < 200, 1, -1)
    y = X[:, :3].sum(1) * sign
    _, t = fit_probe(X * sign[:, None], y, np.array([f"w{i}" for i in range(400)]), y, seed=0)
    v = validate_probe(X, t, [0, 1, 2])
    assert v["flagged_weight_share"] > 0.9 and v["flagged_column_share"] == 0.25
    assert v["flagged_fire_high"] > v["flagged_fire_low"]
    w = validate_probe(X, t, [6, 7, 8])                 # three features unrelated to the target
    assert w["flagged_weight_share"] < 0.2


def test_ablating_a_live_feature_changes_the_output_and_a_dead_one_does_not():
    from rewardsae.activations import _hook_point
    from rewardsae.models import load_causal_lm
    from rewardsae.probes import ablate_features
    from rewardsae.sae import SparseAutoencoder
    model, tok = load_causal_lm("tiny-neox")
    d = model.config.hidden_size
    sae = SparseAutoencoder(d, 4, seed=0)
    e = torch.zeros(d); e[3] = 1.0
    with torch.no_grad():
        sae.W.zero_(); sae.W[0] = e; sae.W[1] = e; sae.b_enc.copy_(torch.tensor([0.5, -1e4, -1e4, -1e4]))
    enc = tok(["a great film, truly"], return_tensors="pt")
    def run(latents):
        got = {}
        with torch.no_grad(), ablate_features(model, {2: sae}, latents):
            h = _hook_point(model, 2, "mlp").register_forward_hook(lambda m, i, o: got.update(o=o.clone()))
            logits = model(**enc).logits
            h.remove()
        return got["o"], logits
    o0, l0 = run({})
    o1, l1 = run({2: [0]})
    o2, l2 = run({2: [1]})
    assert torch.allclose(o1 - o0, -torch.relu(o0 @ e + 0.5)[..., None] * e, atol=1e-5)   # exactly its f·d removed
    assert (l1 - l0).abs().max() > 1e-4 and torch.equal(l2, l0)
    o3, l3 = run({})                                     # the hooks are gone after the block
    assert torch.equal(l3, l0)


def test_random_latents_match_the_flagged_counts_and_firing_frequency():
    from rewardsae.probes import random_latents
    freq = {1: np.array([0.5, 0.5, 0.0, 0.4, 0.6, 1e-4, 2e-4, 3e-4, 0.45, 0.55]), 4: np.array([0.1, 0.2, 0.3])}
    r = random_latents({1: [0, 1], 4: [2]}, freq, seed=0, pool=3)
    assert len(r[1]) == 2 and set(r[1]) <= {3, 4, 8, 9} and r[4] in ([0], [1])     # never dead (2) nor rare (5-7)
    with pytest.raises(ValueError, match="layer 4: 3 flagged latents but only 0"):
        random_latents({4: [0, 1, 2]}, freq, seed=0)


def _repeated_words(n=600, n_words=60, seed=0):
    "Rows of 60 words (30 positive, 30 negative) each used many times, with a sentence id per row (pairs of rows)."
    g = np.random.default_rng(seed)
    vals = np.r_[1 + 3 * g.random(30), -1 - 3 * g.random(30)]
    w = np.r_[g.integers(0, 30, n // 2), g.integers(30, 60, n // 2)]
    return np.array([f"w{i}" for i in w]), vals[w], np.r_[np.arange(n // 2), np.arange(n // 2)], g


def test_word_split_shares_no_word_and_no_sentence_with_training():
    from rewardsae.probes import split_rows
    words, valence, groups, g = _repeated_words()
    tr, te = split_rows(words, valence, seed=0, split="word", groups=groups)
    assert not set(words[tr]) & set(words[te]) and not set(groups[tr]) & set(groups[te])
    assert len(set(words[te])) == 12 and (valence[te] > 0).any() and (valence[te] < 0).any()   # 20% of each sign's words
    rtr, rte = split_rows(words, valence, seed=0, split="row")
    assert len(set(words[rtr]) & set(words[rte])) > 30              # the first version's split: most test words seen
    X = g.normal(size=(len(words), 5))
    s, table = fit_probe(X, valence + 0.1 * X[:, 0], words, valence, seed=0, groups=groups, n_boot=50, n_random=10)
    assert s["split"] == "word" and s["test_words_in_train"] == 0 and s["n_words"] == 12
    assert not set(words[table.attrs["train"]]) & set(words[table.attrs["test"]])
    with pytest.raises(ValueError, match="split must be one of"):
        split_rows(words, valence, split="sentence")


def test_sign_only_and_difference_in_means_baselines():
    words, valence, groups, g = _repeated_words(n=1200)
    sign = np.sign(valence)
    X = np.c_[sign, g.normal(size=(len(words), 4))]          # the features hold the polarity and nothing else
    s, _ = fit_probe(X, sign, words, valence, seed=0, n_boot=50, n_random=50)
    # a probe that knows only the sign: 6 positive and 6 negative test words, all 36 cross pairs concordant, the 30
    # within-sign pairs random: expected tau = 36 / 66
    assert s["sign_only_tau"] == pytest.approx(36 / 66, abs=0.06)
    assert abs(s["tau"] - s["sign_only_tau"]) < 0.15 and s["sign_acc_pos"] == s["sign_acc_neg"] == 1.0
    d, t = fit_probe(X, sign, words, valence, seed=0, method="diff_means", n_boot=50, n_random=10)
    assert t.attrs["coef"][0] == pytest.approx(2.0, abs=0.01) and np.abs(t.attrs["coef"][1:]).max() < 0.4
    assert d["sign_acc_pos"] == d["sign_acc_neg"] == 1.0
    with pytest.raises(ValueError, match="method must be one of"):
        fit_probe(X, sign, words, valence, method="lasso")


def test_compare_probes_puts_a_trained_probe_beside_its_baselines():
    import rewardsae.probe_baselines as pb
    words, valence, _, g = _repeated_words()
    n = len(words) // 2
    contrast = pd.DataFrame({"word": words[:n], "neg_word": words[n:]})
    lexicon = dict(zip(words, valence))
    mag = valence[:, None]                      # signed
    noise = lambda: g.normal(size=(n, 4))
    # "trained" features move by the word's valence along one axis: the probe can read the magnitude; "untrained" holds noise
    planted = {"pos": noise() + np.c_[mag[:n], np.zeros((n, 3))] * 3, "neg": noise() + np.c_[mag[n:], np.zeros((n, 3))] * 3}
    planted["neu"] = np.zeros((n, 4))
    rand = {"pos": noise(), "neg": noise(), "neu": noise()}
    df = pb.compare_probes({"trained": planted, "untrained": rand}, contrast, seed=0, n_boot=100, diff_means_on=("trained",),
                           table=lexicon)
    assert set(zip(df.features, df.probe, df.split)) == {(f, m, s) for s in ("word", "row") for f, m in
        (("trained", "ridge"), ("trained", "diff_means"), ("untrained", "ridge"), ("-", "sign_only"))}
    w = df[df.split == "word"].set_index(["features", "probe"])
    assert (df[df.split == "word"].test_words_in_train == 0).all() and (df[df.split == "row"].test_words_in_train > 0).all()
    assert w.loc[("trained", "ridge"), "tau"] > 0.8 > w.loc[("-", "sign_only"), "tau"]
    assert w.loc[("trained", "ridge"), "tau_lo"] > w.loc[("untrained", "ridge"), "tau"]
    assert w.loc[("trained", "ridge"), "n_words"] == w.loc[("untrained", "ridge"), "n_words"] == 12   # the same test words


def test_probes_section_says_when_the_trained_probe_does_not_beat_its_baselines():
    from types import SimpleNamespace
    from rewardsae.probe_baselines import probes_section
    def result(trained_tau):
        rows = [{"model": m, "features": f, "probe": p, "split": "word", "tau": t, "tau_lo": t - 0.05, "tau_hi": t + 0.05,
                 "n_words": 20, "n_test": 40, "test_words_in_train": 0}
                for m in ("base", "rlhf") for f, p, t in (("trained", "ridge", trained_tau), ("untrained", "ridge", 0.46),
                                                          ("raw", "ridge", 0.49), ("-", "sign_only", 0.49))]
        return {"seed": 0, "n_triples": 100, "comparison": rows, "base": {}, "rlhf": {}}
    low = probes_section(result(0.50), SimpleNamespace(explainer="tokens"))
    high = probes_section(result(0.80), SimpleNamespace(explainer="tokens"))
    assert "does not stand above" in low and "lies above every baseline" in high
    assert "0.500 [0.450, 0.550] (base)" in low and "nan" not in low + high


def test_reward_related_ignores_function_words_and_minor_tokens():
    from rewardsae.probes import reward_related
    # the audit's case (issue 29): "kind" is VADER +2.4 but here the hedge "kind of" / "sort of"
    assert not reward_related('Fires on "kind" (mean 9.7, 52% of activation), "sort" (mean 9.0, 32%), "a" (mean 0.1, 2%).')
    assert not reward_related('Fires on "must" (mean 4.0, 50% of activation), "the" (mean 3.0, 30%), "honestly" (mean 1.0, 3%).')
    assert not reward_related('Fires on "li" (mean 4.0, 40% of activation), "le" (mean 3.0, 30%), "l" (mean 3.0, 25%).')
    assert reward_related('Fires on "great" (mean 6.0, 30% of activation), "good" (mean 5.0, 20%), "the" (mean 1.0, 5%).')
    assert not reward_related('Fires on "the" (mean 6.0, 30% of activation), "a" (mean 5.0, 20%), "great" (mean 1.0, 5%).')
