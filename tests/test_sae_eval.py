"Held-out dictionary metrics with known answers: L0, dead, firing frequency, FVU, PCA baseline, CE loss recovered, reward R²."
import numpy as np
import pytest
import torch

from rewardsae.models import load_causal_lm
from rewardsae.sae import SparseAutoencoder
from rewardsae.sae_eval import (UntrainedDictionary, ce_loss_recovered, heldout_metrics, pca_baseline_fvu, reward_signal_check,
                                reward_signal_r2, token_identity_r2, untrained_like)


class Axes:
    "encode = ReLU(x) on the coordinate axes, decode = f: reconstructs non-negative inputs exactly."
    def __init__(self, d): self.d_in = self.d_hidden = d
    def parameters(self): return iter(())
    def encode(self, x): return torch.relu(x)
    def decode(self, f): return f


class Scale:
    "encode = x (identity), decode = scale·f: scale 1 is a perfect reconstruction, 0 deletes the site."
    def __init__(self, d, scale): self.d_in = self.d_hidden = d; self.scale = scale
    def parameters(self): return iter(())
    def encode(self, x): return x
    def decode(self, f): return self.scale * f


def test_heldout_metrics_by_hand():
    x = torch.tensor([[1.0, 0, 0, 0], [2.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 0]])
    m, freq = heldout_metrics(Axes(4), x)
    # features 0 and 1 fire on 2 and 1 of 4 tokens, 2 and 3 never: L0 = 3/4, dead = 2/4
    assert freq.tolist() == [0.5, 0.25, 0.0, 0.0] and m["l0"] == 0.75 and m["dead_frac"] == 0.5
    assert m["fvu"] == 0 and m["explained_variance"] == 1 and m["n_tokens"] == 4
    assert m["frac_below_1e-4"] == 0.5 and m["frac_above_1e-1"] == 0.5 and m["n_features_90pct_l0"] == 2
    # a reconstruction of 0 plus b_dec = mean: FVU exactly 1
    sae = SparseAutoencoder(4, 2, seed=0)
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)
        sae.b_dec.copy_(x.mean(0))
    m, _ = heldout_metrics(sae, x.numpy())
    assert m["fvu"] == pytest.approx(1.0) and m["l0"] == 0 and m["dead_frac"] == 1.0
    with pytest.raises(ValueError, match="width 4"):
        heldout_metrics(SparseAutoencoder(3, 2), x)


def test_pca_baseline_known_ranks():
    g = np.random.default_rng(0)
    x = g.normal(size=(3000, 2)) @ g.normal(size=(2, 10)) + 5.0 + 1e-4 * g.normal(size=(3000, 10))
    assert pca_baseline_fvu(x[:2000], x[2000:], 2) < 1e-6        # the data has 2 directions
    assert pca_baseline_fvu(x[:2000], x[2000:], 10) < 1e-12
    one = pca_baseline_fvu(x[:2000], x[2000:], 1)
    assert pca_baseline_fvu(x[:2000], x[2000:], 1, max_rows=300) == pytest.approx(one, abs=0.02)   # components from a sample
    assert pca_baseline_fvu(x[:2000], x[2000:], 2, max_rows=300) < 1e-6
    assert 0.05 < one < 0.95
    assert pca_baseline_fvu(x[:2000], x[2000:], 0) == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match="rank"):
        pca_baseline_fvu(x[:2000], x[2000:], 11)


def test_ce_loss_recovered_identity_and_zero():
    model, tok = load_causal_lm("tiny-neox")
    texts = ["A great film with a bad ending.", "Terrible.", "I loved every minute of this wonderful movie."]
    d = model.config.hidden_size
    perfect = ce_loss_recovered(model, tok, texts, layer=2, sae=Scale(d, 1.0), max_length=16, batch_size=2)
    assert perfect["ce_sae"] == pytest.approx(perfect["ce_clean"], abs=1e-6) and perfect["ce_loss_recovered"] == pytest.approx(1.0)
    zero = ce_loss_recovered(model, tok, texts, layer=2, sae=Scale(d, 0.0), max_length=16, batch_size=2)
    assert zero["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-9) and zero["ce_zero"] != zero["ce_clean"]
    assert zero["ce_clean"] == pytest.approx(perfect["ce_clean"])       # hooks are removed after each pass
    half = ce_loss_recovered(model, tok, texts, layer=2, sae=Scale(d, 0.5), max_length=16, batch_size=1)
    assert half["ce_clean"] == pytest.approx(perfect["ce_clean"], abs=1e-5)   # padding does not change CE


def test_reward_signal_planted_and_noise():
    g = np.random.default_rng(0)
    x = np.abs(g.normal(size=(5000, 6))).astype(np.float32)
    u = 3.0 * x[:, 4]                                                   # utility is one coordinate
    r = reward_signal_check(Axes(6), x[:4000], u[:4000], x[4000:], u[4000:])
    assert r["raw_r2"] > 0.999 and r["feature_r2"] > 0.999 and "kept" not in r     # a ratio of R²s is not a share of anything
    noise = g.normal(size=5000)
    assert reward_signal_r2(x[:4000], noise[:4000], x[4000:], noise[4000:]) < 0.05


@pytest.mark.parametrize("density", [1.0, 0.03])
def test_ridge_equals_sklearn(density):
    from sklearn.linear_model import Ridge
    from rewardsae.sae_eval import _ridge
    g = np.random.default_rng(1)
    X = g.normal(size=(800, 40)) * (g.random((800, 40)) < density) + 2.0      # sparse codes: the Gram is built sparse
    X[X == 2.0] = 0.0
    y = X @ g.normal(size=40) + g.normal(size=800) + 5.0
    for a in (1e-3, 1.0, 100.0):
        w, b = _ridge(X, y)(a)
        ref = Ridge(alpha=a).fit(X, y)
        assert np.allclose(w, ref.coef_, atol=1e-8) and b == pytest.approx(ref.intercept_, abs=1e-8)


def test_ce_loss_recovered_has_a_bootstrap_interval_over_reviews():
    from rewardsae.sae_eval import _ratio_ci
    # reviews whose own ratios are 0.5 and 0: together 0.25; resampling gives 0.5, 0.25 or 0 -> interval [0, 0.5]
    assert _ratio_ci([2.0, 2.0], [1.0, 2.0], [0.0, 0.0]) == [0.0, 0.5]
    assert _ratio_ci([2.0, 2.0, 2.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]) == [0.5, 0.5]      # every review the same
    model, tok = load_causal_lm("tiny-neox")
    texts = ["A great film with a bad ending.", "Terrible.", "I loved every minute of this wonderful movie.", "Dull, dull."]
    d = model.config.hidden_size
    perfect = ce_loss_recovered(model, tok, texts, layer=2, sae=Scale(d, 1.0), max_length=16, batch_size=3)
    assert perfect["n_docs"] == 4 and perfect["ce_loss_recovered_ci"] == pytest.approx([1.0, 1.0])
    half = ce_loss_recovered(model, tok, texts, layer=2, sae=Scale(d, 0.5), max_length=16, batch_size=3)
    lo, hi = half["ce_loss_recovered_ci"]
    assert lo <= half["ce_loss_recovered"] <= hi and lo < hi
    # the token-weighted mean over reviews is the same whatever the batching
    one = ce_loss_recovered(model, tok, texts, layer=2, sae=Scale(d, 0.5), max_length=16, batch_size=1)
    assert one["ce_loss_recovered"] == pytest.approx(half["ce_loss_recovered"], abs=1e-5)


def test_token_identity_ridge_equals_sklearn_and_reads_a_token_lookup():
    from sklearn.linear_model import Ridge
    from rewardsae.sae_eval import _onehot_ridge
    g = np.random.default_rng(0)
    t = g.integers(0, 25, size=600)
    y = g.normal(size=25)[t] + 0.3 * g.normal(size=600) + 4.0
    for a in (1e-3, 1.0, 50.0):
        w, b = _onehot_ridge(t, y, 25)(a)
        ref = Ridge(alpha=a).fit(np.eye(25)[t], y)
        assert np.allclose(w, ref.coef_, atol=1e-8) and b == pytest.approx(ref.intercept_, abs=1e-8)
    # utility a function of the token: R² ~ 1; tokens unseen in training get the intercept (here the mean, 0 R²)
    val = g.normal(size=40)
    tt = g.integers(0, 30, size=4000)
    assert token_identity_r2(tt[:3000], val[tt[:3000]], tt[3000:], val[tt[3000:]]) > 0.999
    unseen = np.arange(30, 40).repeat(20)
    assert token_identity_r2(tt[:3000], val[tt[:3000]], unseen, val[unseen]) < 0.0
    assert token_identity_r2(tt, g.normal(size=4000), tt[:500], g.normal(size=500)) < 0.05


def test_untrained_dictionary_keeps_k_codes_and_copies_width_and_l0():
    from rewardsae.batchtopk import BatchTopKSAE
    rd = UntrainedDictionary(8, 32, k=3, seed=1)
    x = torch.randn(50, 8)
    f = rd.encode(x)
    assert ((f > 0).sum(1) == 3).all() and torch.allclose(rd.W.norm(dim=1), torch.ones(32))
    assert torch.equal(UntrainedDictionary(8, 32, k=3, seed=1).encode(x), f) and rd.decode(f).shape == (50, 8)
    top = f.max(1).values                              # the kept codes are the largest of ReLU(W x)
    assert torch.allclose(top, torch.relu(x @ rd.W.T).max(1).values)
    like = untrained_like(BatchTopKSAE(8, 16, k=4.0), seed=0)
    assert (like.d_in, like.d_hidden, like.k) == (8, 16, 4)
    assert untrained_like(SparseAutoencoder(8, 16), l0=6.6).k == 7
    with pytest.raises(ValueError, match="l0 is needed"):
        untrained_like(SparseAutoencoder(8, 16))


def test_reward_signal_check_reports_an_untrained_dictionary_below_a_trained_one():
    g = np.random.default_rng(0)
    x = np.abs(g.normal(size=(5000, 6))).astype(np.float32)
    u = 3.0 * x[:, 4]
    r = reward_signal_check(Axes(6), x[:4000], u[:4000], x[4000:], u[4000:], untrained=UntrainedDictionary(6, 6, k=1, seed=0))
    assert r["feature_r2"] > 0.999 and r["untrained_r2"] < 0.9
