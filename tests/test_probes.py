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
    assert s["random_tau_ci"][0] < 0.2 and abs(s["random_tau_mean"]) < 0.15 and s["n_test"] == 100
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
