"Sparse autoencoders: SPEC §1.4 forward, hand-written gradients, toy recovery of known features, I/O, bad input."
import numpy as np
import pytest
import torch

from rewardsae.sae import (NonFiniteError, SparseAutoencoder, _read_rows, _sample_rows, evaluate_sae, sae_step_grads, toy_data,
                           train_sae)


def _best_cos(true, learned):
    t = true / true.norm(dim=1, keepdim=True)
    l = learned / learned.norm(dim=1, keepdim=True)
    return (t @ l.T).max(dim=1).values.mean().item()


def test_forward_matches_hand_computation():
    sae = SparseAutoencoder(2, 3, tied=True)
    with torch.no_grad():
        sae.W.copy_(torch.tensor([[3.0, 4.0], [0.0, -2.0], [1.0, 1.0]]))   # unit rows: (.6,.8), (0,-1), (.7071,.7071)
        sae.b_enc.copy_(torch.tensor([0.0, 0.5, -1.0]))
        sae.b_dec.copy_(torch.tensor([1.0, -1.0]))
    x = torch.tensor([[1.0, 2.0]])
    # pre = (.6+1.6, -2+.5, 2.1213-1) = (2.2, -1.5, 1.1213) -> f = (2.2, 0, 1.1213)
    x_hat, f = sae(x)
    assert f.tolist()[0] == pytest.approx([2.2, 0.0, 3 / 2 ** 0.5 - 1], abs=1e-6)
    r = 1.1213203 / 2 ** 0.5
    assert x_hat.tolist()[0] == pytest.approx([2.2 * 0.6 + r + 1, 2.2 * 0.8 + r - 1], abs=1e-5)
    loss, _, _ = sae.loss(x, l1_coef=0.1)
    mse = ((x_hat - x) ** 2).mean().item()
    assert loss.item() == pytest.approx(mse + 0.1 * (2.2 + 1.1213203), rel=1e-5)


def test_tied_dictionary_unit_norm_even_after_scaling():
    sae = SparseAutoencoder(5, 7, tied=True, seed=0)
    x = torch.randn(4, 5)
    before = sae(x)
    with torch.no_grad():
        sae.W.mul_(torch.arange(1.0, 8.0)[:, None])   # rescale each row differently
    assert torch.allclose(sae.dictionary.norm(dim=1), torch.ones(7), atol=1e-6)
    assert torch.allclose(sae(x)[0], before[0], atol=1e-5)   # the normalisation makes the scale irrelevant
    assert sae.W.norm(dim=1)[6].item() == pytest.approx(7.0, rel=1e-5)   # not renormalised in place


def test_untied_normalises_decoder_rows_only():
    sae = SparseAutoencoder(4, 6, tied=False, seed=0)
    with torch.no_grad():
        sae.W_dec.mul_(5.0)
        sae.W.mul_(3.0)
    assert torch.allclose(sae.dictionary.norm(dim=1), torch.ones(6), atol=1e-6)
    x = torch.randn(3, 4)
    assert torch.allclose(sae.encode(x), torch.relu(x @ sae.W.T + sae.b_enc))   # encoder is free


@pytest.mark.parametrize("tied", [True, False])
def test_hand_written_gradients_equal_autograd(tied):
    torch.manual_seed(0)
    sae = SparseAutoencoder(8, 16, tied=tied, seed=1).double()
    with torch.no_grad():
        sae.W.mul_(torch.rand(16, 1, dtype=torch.float64) * 3 + 0.5)
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_()
        if not tied:
            sae.W_dec.mul_(2.0)
    x = torch.randn(32, 8, dtype=torch.float64)
    loss, _, f = sae.loss(x, 0.01)
    loss.backward()
    ref = {k: p.grad.clone() for k, p in sae.named_parameters()}
    loss2, sse, counts = sae_step_grads(sae, x.clone(), 0.01)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-12)
    for k, p in sae.named_parameters():
        assert torch.allclose(p.grad, ref[k], atol=1e-12), k
    assert counts.sum().item() == (f > 0).sum().item()


def test_toy_features_recovered():
    X, true = toy_data(n_samples=20_000, d=32, n_features=64, k=3, seed=0)
    sae, m = train_sae(X, 128, l1_coef=1e-2, lr=1e-2, epochs=4, batch_size=128, progress=False)
    # the init must not contain the answer (toy_data and the SAE draw from different random streams)
    assert _best_cos(true, SparseAutoencoder(32, 128, seed=128).dictionary) < 0.6
    assert _best_cos(true, sae.dictionary) >= 0.85
    assert _best_cos(true, torch.randn(128, 32, generator=torch.Generator().manual_seed(1))) < 0.6            # chance level, for contrast
    assert m.fvu.iloc[-1] < 0.3 and 2.5 < m.l0.iloc[-1] < 6 and list(m.epoch) == [1, 2, 3, 4]


def test_memmap_input_chunked_and_metrics_known(tmp_path):
    # Data on a ray: with l1_coef = 0 an SAE reconstructs it exactly, with a feature along the ray.
    g = torch.Generator().manual_seed(0)
    t = torch.rand(3000, 1, generator=g) * 4 + 1
    direction = torch.tensor([[0.6, 0.8, 0.0]])
    X = (t * direction).numpy().astype(np.float32)
    path = tmp_path / "acts.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    sae, m = train_sae(mm, 4, l1_coef=0.0, lr=1e-2, epochs=30, batch_size=100, chunk_bytes=600 * 12,
                       progress=False)
    ev = evaluate_sae(sae, mm)
    assert ev["fvu"] < 1e-2 and 0.5 <= ev["l0"] <= 4.0 and m.fvu.iloc[0] > 10 * ev["fvu"]


def test_read_rows_of_memmap_slices_equal_the_array(tmp_path):
    X = np.arange(1000 * 6, dtype=np.float32).reshape(1000, 6)
    np.save(tmp_path / "a.npy", X)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    for view, ref in ((mm, X), (mm[137:], X[137:]), (mm[5:900][10:], X[5:900][10:])):   # slices keep numpy's stale offset
        got = _read_rows(view, [(3, 40), (700, 10_000), (50, 50)])                         # clipped; empty spans dropped
        assert np.array_equal(got.numpy(), np.concatenate([ref[3:40], ref[700:]]))
    np.save(tmp_path / "h.npy", X.astype(np.float16))                                      # not float32: the plain copy
    assert np.array_equal(_read_rows(np.load(tmp_path / "h.npy", mmap_mode="r"), [(2, 9)]).numpy(), X[2:9])
    a = _sample_rows(mm, 256, seed=3)                                                       # 4 blocks of 64 whole rows
    assert a.shape == (256, 6) and torch.equal(a, _sample_rows(X, 256, seed=3))
    starts = a[::64, 0].numpy() / 6
    assert np.all(starts % 64 == 0) and np.all(np.diff(starts) > 0)
    assert np.array_equal(a.numpy(), np.concatenate([X[int(s):int(s) + 64] for s in starts]))


def test_evaluate_by_hand():
    sae = SparseAutoencoder(2, 2, tied=True)
    with torch.no_grad():
        sae.W.copy_(torch.eye(2))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    X = torch.tensor([[1.0, -1.0], [3.0, 2.0], [-1.0, -2.0], [0.0, 4.0]])
    # f = relu(x); x_hat = relu(x); errors only at negative entries: 1, 1, 4 -> sse 6
    ev = evaluate_sae(sae, X)
    var = ((X - X.mean(0)) ** 2).sum().item()
    assert ev["mse"] == pytest.approx(6 / 8) and ev["fvu"] == pytest.approx(6 / var)
    assert ev["l0"] == pytest.approx(4 / 4) and ev["dead_frac"] == 0.0


def test_save_load_round_trip(tmp_path):
    for tied in (True, False):
        X, _ = toy_data(n_samples=2000, seed=1)
        sae, _ = train_sae(X, 48, epochs=1, batch_size=256, tied=tied, progress=False, layer=3)
        folder = sae.save(tmp_path / f"sae_{tied}", metadata={"model_name": "toy", "hook_name": "x"})
        assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
        back = SparseAutoencoder.load(folder)
        assert back.tied == tied and back.metadata["hook_layer"] == 3 and back.metadata["model_name"] == "toy"
        assert back.metadata["l1_coefficient"] == 1e-3
        xh, f = sae(X[:200])
        xh2, f2 = back(X[:200])
        assert torch.allclose(f, f2, rtol=1e-5, atol=1e-6) and torch.allclose(xh, xh2, rtol=1e-5, atol=1e-6)
        assert torch.allclose(back.dictionary, sae.dictionary, atol=1e-6)


def test_nan_input_names_layer_and_step():
    X = torch.randn(1000, 4)
    X[0, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"layer 7: .*at step \d+ of epoch 1"):
        train_sae(X, 8, batch_size=100, layer=7, progress=False)
    # with no shuffling left to chance: the bad row is read at the step its shuffled position falls in
    g = torch.Generator().manual_seed(0)
    pos = int((torch.randperm(1000, generator=g) == 0).nonzero())
    with pytest.raises(NonFiniteError, match=rf"at step {pos // 100 + 1} of epoch 1"):
        train_sae(X, 8, batch_size=100, layer=7, progress=False)


def test_diverging_loss_names_step():
    X = torch.randn(512, 4) * 3e19          # finite input whose squared error overflows float32
    with pytest.raises(NonFiniteError, match=r"loss became NaN/inf at step 1\b"):
        train_sae(X, 8, batch_size=64, progress=False)


@pytest.mark.parametrize("args, msg", [
    ((np.zeros((0, 4), np.float32), 8), "empty"),
    ((np.zeros((10, 4), np.float32), 0), "d_hidden"),
    ((np.zeros((10, 4), np.float32), -3), "d_hidden"),
    ((np.zeros(10, np.float32), 8), "shape"),
])
def test_bad_input_clear_errors(args, msg):
    with pytest.raises(ValueError, match=msg):
        train_sae(*args, progress=False)
    with pytest.raises(ValueError, match="d_hidden"):
        SparseAutoencoder(4, 0)


def test_ablation_sweep_trends_and_layer_inputs(tmp_path):
    from rewardsae.ablations import l1_sweep, layer_arrays, layer_choice, tied_vs_untied
    X, _ = toy_data(n_samples=4000, seed=2)
    acts = {3: X, 5: X * 2}
    df, mean, fig = l1_sweep(acts, l1_coefs=(0.0, 0.1), epochs=2, batch_size=128, path=tmp_path / "fig4")
    assert (tmp_path / "fig4.png").exists() and (tmp_path / "fig4.pdf").exists()
    assert len(df) == 4 and mean.l0[0] > 1.3 * mean.l0[1] and mean.reconstruction[0] < mean.reconstruction[1]
    assert mean.sparsity[0] == pytest.approx(mean.l0[0] / 100)
    t6, _ = tied_vs_untied(acts, layers=[3], epochs=1, batch_size=256)
    assert list(t6.tied) == [True, False]
    t7, per = layer_choice(acts, highest=[5], lowest=[3], epochs=1, batch_size=256)
    assert list(t7.choice) == ["highest divergence", "lowest layers"] and list(per.layer) == [5, 3]
    with pytest.raises(ValueError, match=r"layers \[7\]"):
        layer_arrays(acts, [7])
    # held out: trained on the first 3000 rows, measured on the last 1000, which here are pure noise -> far worse
    noisy = np.r_[X[:3000].numpy(), np.random.default_rng(0).normal(size=(1000, X.shape[1])).astype(np.float32)]
    _, inside, _ = l1_sweep({3: noisy[:3000]}, l1_coefs=(1e-3,), epochs=1, batch_size=128)
    _, held, _ = l1_sweep({3: noisy}, l1_coefs=(1e-3,), epochs=1, batch_size=128, heldout_from=3000)
    sae, _ = train_sae(noisy[:3000], 2 * X.shape[1], l1_coef=1e-3, epochs=1, batch_size=128, layer=3, progress=False)
    assert held.reconstruction[0] == pytest.approx(evaluate_sae(sae, noisy[3000:])["fvu"])   # exactly that protocol
    assert held.reconstruction[0] > 1.3 * inside.reconstruction[0]


def test_training_curve_rows_every_log_every_steps():
    X, _ = toy_data(n_samples=1000, d=16, n_features=32, seed=1)
    # 1000 rows / batch 100 = 10 steps an epoch; a window closes every 4 steps and at each epoch's end
    _, curve = train_sae(X, 32, l1_coef=1e-3, lr=1e-2, epochs=2, batch_size=100, log_every=4, progress=False)
    assert curve.step.tolist() == [4, 8, 10, 12, 16, 20] and curve.epoch.tolist() == [1, 1, 1, 2, 2, 2]
    assert curve.fvu.iloc[-1] < curve.fvu.iloc[0]           # it learns: the last window reconstructs better
    _, per_epoch = train_sae(X, 32, l1_coef=1e-3, lr=1e-2, epochs=2, batch_size=100, progress=False)
    assert per_epoch.epoch.tolist() == [1, 2] and "step" not in per_epoch
    with pytest.raises(ValueError, match="log_every"):
        train_sae(X, 32, log_every=0, progress=False)


def test_bf16_matmuls_give_a_dictionary_of_equal_quality():
    from rewardsae.precision import resolve_dtype
    X, _ = toy_data(n_samples=4000, d=32, n_features=64, k=3, seed=2)
    kw = dict(l1_coef=1e-2, lr=1e-2, epochs=2, batch_size=256, progress=False)
    fp32, _ = train_sae(X, 128, **kw)
    bf16, _ = train_sae(X, 128, compute_dtype="bfloat16", **kw)
    assert bf16.metadata["compute_dtype"] == "bfloat16" and fp32.metadata["compute_dtype"] == "float32"
    a, b = evaluate_sae(fp32, X)["fvu"], evaluate_sae(bf16, X)["fvu"]
    assert abs(b - a) / a < 0.02                                     # FVU within 2% relative
    assert not torch.equal(fp32.W, bf16.W)                           # it really took the other path
    with pytest.raises(ValueError, match="unknown compute dtype"):
        resolve_dtype("fp8")


def test_fused_adam_trains_as_foreach(monkeypatch):
    """Every trainer's Adam (`rewardsae.sae.adam`: torch's fused kernel for contiguous parameters) gives the same
    weights as the `foreach` Adam. torch's fused CPU Adam silently misreads a gradient laid out unlike its parameter,
    so a trainer with a transposed parameter or gradient fails here."""
    import rewardsae.batchtopk as btk
    import rewardsae.crosscoder as ccm
    import rewardsae.sae as sae_mod
    from rewardsae.sae import adam
    assert "fused" in adam([torch.nn.Parameter(torch.zeros(3, 2))], 1e-3).defaults and \
        adam([torch.nn.Parameter(torch.zeros(2, 3).T)], 1e-3).defaults["fused"] in (None, False)   # non-contiguous: foreach
    X, _ = toy_data(n_samples=3000, d=16, n_features=32, k=3, seed=1)
    Y = X + 0.1 * torch.randn_like(X)
    runs = {"tied L1": lambda: train_sae(X, 32, l1_coef=1e-3, lr=1e-2, epochs=2, batch_size=256, progress=False)[0],
            "untied L1": lambda: train_sae(X, 32, l1_coef=1e-3, lr=1e-2, epochs=2, tied=False, batch_size=256, progress=False)[0],
            "BatchTopK": lambda: btk.train_batchtopk(X, 32, k=3, lr=1e-2, epochs=2, batch_size=256, progress=False)[0],
            "crosscoder": lambda: ccm.train_crosscoder(X, Y, 32, k=3, lr=1e-2, epochs=2, batch_size=256, progress=False)[0]}
    fused = {name: run().state_dict() for name, run in runs.items()}
    foreach = lambda params, lr: torch.optim.Adam(list(params), lr=lr, foreach=True)
    for mod in (sae_mod, btk, ccm):
        monkeypatch.setattr(mod, "adam", foreach)
    for name, run in runs.items():
        for (n, a), b in zip(fused[name].items(), run().state_dict().values()):
            assert torch.allclose(a, b, atol=1e-4), f"{name} {n}: {(a - b).abs().max().item()}"
