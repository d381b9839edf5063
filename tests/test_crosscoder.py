"BatchTopK crosscoder (chapter 8a): known features and classes recovered, Latent Scaling by hand and against the authors' closed form."
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rewardsae.crosscoder import (BatchTopKCrosscoder, evaluate_crosscoder, latent_classes, latent_scaling, load_crosscoder,
                                  match_features, paired_activations, save_crosscoder, toy_pairs, train_crosscoder)


@pytest.fixture(scope="module")
def toy():
    xb, xt, dirs, kind = toy_pairs()
    cc, curve = train_crosscoder(xb.numpy(), xt.numpy(), d_sae=120, k=3, lr=1e-2, epochs=5, batch_size=512, progress=False)
    return xb, xt, dirs, kind, cc, curve


def test_crosscoder_recovers_shared_base_only_and_tuned_only_features(toy):
    xb, xt, dirs, kind, cc, curve = toy
    m = match_features(cc, dirs, kind)
    assert (m.cosine >= 0.9).all()
    assert (m[m.kind == "tuned_only"].relative_norm > 0.9).all()
    assert (m[m.kind == "base_only"].relative_norm < 0.1).all()
    assert m[m.kind == "shared"].relative_norm.between(0.4, 0.6).all()
    metrics, freq = evaluate_crosscoder(cc, xb.numpy()[:5000], xt.numpy()[:5000])
    assert metrics["fvu_base"] < 0.1 and metrics["fvu_tuned"] < 0.1 and 2 < metrics["l0"] < 4.5
    assert curve.fvu.iloc[-1] < curve.fvu.iloc[0]


def test_latent_classes_at_the_stated_thresholds():
    rel = [0.95, 0.9, 0.8, 0.7, 0.65, 0.6, 0.5, 0.4, 0.35, 0.3, 0.2, 0.1, 0.05, 0.5]
    assert latent_classes(rel, [1] * 13 + [0]).tolist() == [
        "tuned_only", "tuned_leaning", "tuned_leaning", "tuned_leaning", "other", "shared", "shared", "shared", "other",
        "base_leaning", "base_leaning", "base_leaning", "base_only", "dead"]


def test_save_load_gives_the_same_codes(toy, tmp_path):
    xb, xt, *_, cc, _ = toy
    save_crosscoder(cc, tmp_path / "cc", metadata={"hook_layer": 3})
    back = load_crosscoder(tmp_path / "cc")
    x = torch.cat([xb[:64], xt[:64]], 1)
    assert torch.allclose(back.encode(x), cc.encode(x)) and back.metadata["hook_layer"] == 3
    assert torch.allclose(back.decode(back.encode(x)), cc.decode(cc.encode(x)))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "cfg.json").write_text('{"architecture": "jumprelu"}')
    with pytest.raises(ValueError, match="holds a 'jumprelu', not a batchtopk_crosscoder"):
        load_crosscoder(tmp_path / "other")


def test_paired_activations_refuse_unharvested_layers_and_different_tokens():
    a = SimpleNamespace(layers=[3], n_tokens=4, token_id=np.arange(4), activations=lambda l: np.zeros((4, 2)))
    b = SimpleNamespace(layers=[3], n_tokens=4, token_id=np.array([0, 1, 2, 9]), activations=lambda l: np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"layer 5 was not harvested for the base model \(harvested: \[3\]\)"):
        paired_activations(a, a, 5)
    with pytest.raises(ValueError, match="the two stores hold different tokens"):
        paired_activations(a, b, 3)
    assert paired_activations(a, a, 3)[0].shape == (4, 2)


def _hand_crosscoder(base_decodes_latent0: bool = False, second_base_latent: bool = False):
    "d = 4, two latents; latent 0 reads the tuned model's e0 and writes e0 only in the tuned model."
    cc = BatchTopKCrosscoder(4, 2, k=1)
    with torch.no_grad():
        cc.W_enc.zero_(); cc.W_dec.zero_(); cc.b_enc.zero_(); cc.b_dec.zero_(); cc.threshold.zero_()
        cc.W_enc[4 + 0, 0] = 1.0                 # latent 0: reads e0 of x_tuned
        cc.decoders[0, 1, 0] = 1.0               # writes e0 in the tuned model only
        if second_base_latent:                   # latent 1: reads e0 of x_base, writes it in the base model only
            cc.W_enc[0, 1] = 1.0
            cc.decoders[1, 0, 0] = 1.0
    return cc


def test_latent_scaling_by_hand():
    a = torch.tensor([1.0, 2.0, 0.5, 3.0])
    e0 = torch.eye(4)[0]
    xt = a[:, None] * e0
    # genuinely tuned-only: the base model has nothing along e0 -> both ratios 0
    df = latent_scaling(_hand_crosscoder(), torch.zeros(4, 4).numpy(), xt.numpy(), [0])
    r = df.iloc[0]
    assert r.beta_eps_tuned == pytest.approx(1) and r.beta_r_tuned == pytest.approx(1)
    assert r.nu_eps == pytest.approx(0) and r.nu_r == pytest.approx(0) and bool(r.passes) and r.n_firing == 4
    # Complete Shrinkage: the base model has e0 too, left in its error -> nu_eps = 1
    r = latent_scaling(_hand_crosscoder(), xt.numpy(), xt.numpy(), [0]).iloc[0]
    assert r.nu_eps == pytest.approx(1) and r.nu_r == pytest.approx(0) and not r.passes
    # Latent Decoupling: another (base-only) latent reconstructs it in the base model -> nu_r = 1
    r = latent_scaling(_hand_crosscoder(second_base_latent=True), xt.numpy(), xt.numpy(), [0]).iloc[0]
    assert r.nu_eps == pytest.approx(0) and r.nu_r == pytest.approx(1) and not r.passes


def test_fast_gradients_equal_the_autograd_reference():
    from rewardsae.batchtopk import batchtopk_step_grads
    from rewardsae.crosscoder import crosscoder_loss
    g = torch.Generator().manual_seed(0)
    cc = BatchTopKCrosscoder(8, 24, k=3, seed=1)
    with torch.no_grad():
        cc.W_dec.mul_(torch.rand(24, 1, generator=g) + 0.5)     # unequal decoder norms: the score matters
        cc.decoders[:5, 0] *= 0.1                                # some latents lean to the tuned model
        cc.b_enc.normal_(generator=g); cc.b_dec.normal_(generator=g)
    xs = torch.randn(32, 16, generator=g)
    dead = torch.zeros(24, dtype=torch.bool); dead[::4] = True
    for d in (None, dead):
        cc.zero_grad()
        ref = crosscoder_loss(cc, xs, d, aux_coef=0.5, k_aux=4)
        ref.backward()
        want = {n: p.grad.clone() for n, p in cc.named_parameters()}
        with torch.no_grad():
            loss, *_ = batchtopk_step_grads(cc, xs, d, aux_coef=0.5, k_aux=4, score_weight=cc.decoder_norms().sum(1))
        assert torch.allclose(loss, ref.detach(), rtol=1e-5)
        for n, p in cc.named_parameters():
            assert torch.allclose(p.grad, want[n], atol=1e-5, rtol=1e-4), n


def test_latent_scaling_reconstruction_target_includes_the_decoder_bias():
    """nu^r as in Minder et al.'s scripts/compute_scalers.py: the target is the whole reconstruction decode(f)[m],
    bias included. Latent 0 is tuned-only; the decoder bias has 0.5 (base) and 0.25 (tuned) along its decoder e0."""
    a = torch.tensor([1.0, 2.0, 0.5, 3.0])
    e0 = torch.eye(4)[0]
    cc = _hand_crosscoder()
    with torch.no_grad():
        cc.b_dec[0], cc.b_dec[4] = 0.5, 0.25
    r = latent_scaling(cc, torch.zeros(4, 4).numpy(), (a[:, None] * e0).numpy(), [0]).iloc[0]
    m = float(a.sum() / a.pow(2).sum())                       # sum f / sum f^2 with f = a
    assert r.beta_r_base == pytest.approx(0.5 * m) and r.beta_r_tuned == pytest.approx(1 + 0.25 * m)
    assert r.nu_r == pytest.approx(0.5 * m / (1 + 0.25 * m))
    assert r.beta_eps_base == pytest.approx(-0.5 * m) and r.beta_eps_tuned == pytest.approx(1 - 0.25 * m)
    # a random crosscoder with a random bias: the closed form beta = d . sum_t f_t y_t / (|d|^2 sum_t f_t^2) on y = decode(f)[m]
    g = torch.Generator().manual_seed(3)
    cc = BatchTopKCrosscoder(6, 10, k=3, seed=1, scale=(0.7, 1.3))
    with torch.no_grad():
        cc.b_dec.normal_(generator=g); cc.W_dec.mul_(torch.rand(10, 1, generator=g) + 0.5)
    xb, xt = torch.randn(300, 6, generator=g), torch.randn(300, 6, generator=g)
    lat = [1, 4, 7]
    df = latent_scaling(cc, xb.numpy(), xt.numpy(), lat, batch_size=64)
    with torch.no_grad():
        f = cc.encode(torch.stack([xb, xt], 1))
        rec = cc.decode_scaled(f)
    D = cc.decoders.detach()[lat, 1]
    for m, col in ((0, "beta_r_base"), (1, "beta_r_tuned")):
        want = ((f[:, lat].T @ rec[:, m]) * D).sum(1) / (D.pow(2).sum(1) * f[:, lat].pow(2).sum(0))
        assert np.allclose(df[col].to_numpy(), want.numpy(), rtol=1e-4), (col, df[col].tolist(), want.tolist())
