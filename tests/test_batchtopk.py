"BatchTopK SAEs: batch top-k, hand-written gradients and AuxK, toy recovery, threshold, input-scale folding, I/O."
import json

import numpy as np
import pytest
import torch

from rewardsae.batchtopk import (BatchTopKSAE, batch_topk, batch_topk_indices, batchtopk_step_grads,
                                 estimate_norm_scaling_factor, evaluate_batchtopk, fold_input_scale, load_any_sae,
                                 load_batchtopk, remove_parallel_grad, save_batchtopk, train_batchtopk)
from rewardsae.sae import NonFiniteError, SparseAutoencoder, toy_data, train_sae


def _best_cos(true, learned):
    t = true / true.norm(dim=1, keepdim=True)
    l = learned / learned.norm(dim=1, keepdim=True)
    return (t @ l.T).max(dim=1).values.mean().item()


@pytest.fixture(scope="module")
def toy():
    return toy_data(n_samples=20_000, d=32, n_features=64, k=3, seed=0)


@pytest.fixture(scope="module")
def trained(toy):
    X, _ = toy
    return train_batchtopk(X, 128, k=3, lr=1e-2, epochs=3, batch_size=256, progress=False)


def test_batch_topk_matches_plain_topk():
    g = torch.Generator().manual_seed(0)
    for B, m, k in [(512, 384, 8), (64, 48, 5), (300, 200, 1)]:          # fast path, small-input path
        pre = torch.randn(B, m, generator=g)
        f, smallest = batch_topk(pre, k * B)
        v, i = torch.topk(pre.relu().flatten(), k * B)
        ref = torch.zeros(B * m).scatter_(0, i, v).view(B, m)
        assert torch.equal(f, ref)
        assert smallest.item() == v.min().item()
    pre = -torch.ones(10, 40)                                              # fewer positives than k*B: fallback
    pre[0, :3] = torch.tensor([3.0, 2.0, 1.0])
    idx, v = batch_topk_indices(pre, 20)
    assert idx.tolist() == [0, 1, 2] and v.tolist() == [3.0, 2.0, 1.0]


@pytest.mark.parametrize("with_dead", [False, True])
def test_hand_written_gradients_equal_autograd(with_dead):
    sae = BatchTopKSAE(8, 24, k=3, seed=1).double()
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_()
        sae.W_enc.mul_(1.7)
    x = torch.randn(16, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    dead = torch.zeros(24, dtype=torch.bool)
    dead[[1, 5, 7, 20]] = True
    dead = dead if with_dead else None
    loss, _, f = sae.loss(x, dead, aux_coef=0.5, k_aux=3)
    loss.backward()
    ref = {n: p.grad.clone() for n, p in sae.named_parameters()}
    loss2, sse, counts, smallest = batchtopk_step_grads(sae, x, dead, aux_coef=0.5, k_aux=3)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-12)
    for n, p in sae.named_parameters():
        assert torch.allclose(p.grad, ref[n], atol=1e-12), n
    assert counts.sum().item() == (f > 0).sum().item() == 3 * 16
    assert smallest.item() == pytest.approx(f[f > 0].min().item(), rel=1e-12)   # addmm vs matmul + add: an ulp apart on some CPUs


def test_toy_features_recovered(toy, trained):
    X, true = toy
    sae, m = trained
    assert _best_cos(true, BatchTopKSAE(32, 128, k=3, seed=128).dictionary) < 0.6   # the init is not the answer
    assert _best_cos(true, sae.dictionary) >= 0.9
    assert m.fvu.iloc[-1] < m.fvu.iloc[0] < 1.0


def test_exactly_k_per_token_in_training_and_threshold_l0(toy, trained):
    X, _ = toy
    sae, _ = trained
    sae.train()
    try:
        _, f = sae(X[:512])
        assert (f > 0).sum().item() == 3 * 512                             # exactly k*B over the batch ...
        per_tok = (f > 0).sum(1)
        assert per_tok.min().item() < 3 < per_tok.max().item()             # ... not k per token
        _, _, counts, _ = batchtopk_step_grads(sae, X[:512] * sae.metadata["norm_scaling_factor"])
        assert counts.sum().item() == 3 * 512
    finally:
        sae.eval()
        for p in sae.parameters():
            p.grad = None
    ev = evaluate_batchtopk(sae, X)                                         # JumpReLU with the learned threshold
    assert 0.7 * 3 <= ev["l0"] <= 1.3 * 3
    assert sae.threshold.item() > 0
    f = sae.encode(X[:100])
    assert torch.equal(f > 0, sae.hidden_pre(X[:100]) > sae.threshold)


def test_running_threshold_without_calibration(toy):
    X, _ = toy
    sae, m = train_batchtopk(X, 128, k=3, lr=1e-2, epochs=3, batch_size=256, progress=False, calibrate_batches=0)
    assert sae.threshold.item() == pytest.approx(m.threshold.iloc[-1], rel=1e-5)   # raw units in both
    assert (m.threshold > 0).all()
    assert 0.7 * 3 <= evaluate_batchtopk(sae, X)["l0"] <= 1.3 * 3


def test_decoder_rows_unit_norm_after_training(trained):
    sae, _ = trained
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(128), atol=1e-5)
    assert torch.allclose(sae.dictionary, sae.W_dec.detach(), atol=1e-5)


def test_decoder_gradient_parallel_part_removed():
    sae = BatchTopKSAE(16, 32, k=4, seed=0)
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    batchtopk_step_grads(sae, x)
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() > 1e-6
    remove_parallel_grad(sae)
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-7


def test_auxk_gives_dead_latent_a_gradient():
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    sae = BatchTopKSAE(16, 32, k=2, seed=0)
    with torch.no_grad():
        sae.b_enc[5] = -50.0                                                # latent 5 never fires
    dead = torch.zeros(32, dtype=torch.bool)
    dead[5] = True
    batchtopk_step_grads(sae, x, dead, aux_coef=0.0)
    assert sae.W_enc.grad[:, 5].abs().max() == 0 and sae.W_dec.grad[5].abs().max() == 0   # MSE alone: nothing
    batchtopk_step_grads(sae, x, dead, aux_coef=1 / 32)
    assert sae.W_enc.grad[:, 5].abs().max() > 0 and sae.W_dec.grad[5].abs().max() > 0
    assert sae.b_enc.grad[5] != 0
    g_enc = sae.W_enc.grad.clone()
    batchtopk_step_grads(sae, x, None, aux_coef=1 / 32)                     # no dead mask: no AuxK
    assert g_enc[:, 5].abs().max() > 0 and sae.W_enc.grad[:, 5].abs().max() == 0


def test_fold_input_scale_matches_unfolded_on_scaled_input():
    g = torch.Generator().manual_seed(0)
    sae = BatchTopKSAE(12, 40, k=4, seed=3)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5, generator=g)
        sae.b_dec.normal_(0, 1.0, generator=g)
        sae.threshold.fill_(0.3)
    sae.eval()
    x = torch.randn(200, 12, generator=g) * 37.0
    s = 0.05
    folded = BatchTopKSAE(12, 40, k=4)
    folded.load_state_dict(sae.state_dict())
    fold_input_scale(folded, s).eval()
    f_ref = sae.encode(s * x)
    f_fold = folded.encode(x)
    assert torch.equal(f_fold > 0, f_ref > 0)                               # same support
    assert (f_fold > 0).sum() > 0 and (f_ref == 0).sum() > 0
    assert torch.allclose(f_fold * s, f_ref, atol=1e-5)                     # latents: the unfolded ones / s
    assert torch.allclose(folded.decode(f_fold), sae.decode(f_ref) / s, atol=1e-5 / s)   # raw-unit reconstruction
    assert torch.allclose(folded(x)[0] * s, sae(s * x)[0], atol=1e-5)
    assert torch.equal(folded.W_dec, sae.W_dec) and torch.equal(folded.W_enc, sae.W_enc)   # unit rows kept


def test_training_is_scale_invariant(toy):
    X, _ = toy
    X = X[:4000]
    a, _ = train_batchtopk(X, 64, k=3, lr=1e-2, epochs=1, batch_size=256, progress=False)
    b, mb = train_batchtopk(X * 50.0, 64, k=3, lr=1e-2, epochs=1, batch_size=256, progress=False)
    assert b.metadata["norm_scaling_factor"] == pytest.approx(a.metadata["norm_scaling_factor"] / 50, rel=1e-5)
    assert torch.allclose(a.W_dec, b.W_dec, atol=1e-3)
    assert torch.allclose(a.encode(X[:200]), b.encode(50 * X[:200]) / 50, atol=1e-3)
    assert evaluate_batchtopk(b, X * 50)["fvu"] == pytest.approx(evaluate_batchtopk(a, X)["fvu"], abs=1e-3)
    # without input scaling the same lr on 50x larger inputs learns something else entirely
    c, _ = train_batchtopk(X * 50.0, 64, k=3, lr=1e-2, epochs=1, batch_size=256, progress=False, scale_inputs=False)
    assert c.metadata["norm_scaling_factor"] == 1.0
    assert not torch.allclose(a.W_dec, c.W_dec, atol=1e-2)


def test_estimate_norm_scaling_factor_and_nan_rows():
    x = torch.randn(1000, 16) * 3
    s = estimate_norm_scaling_factor(x)
    assert s == pytest.approx(4.0 / x.norm(dim=1).mean().item(), rel=1e-5)
    x[7, 3] = float("nan")
    s2 = estimate_norm_scaling_factor(x)                                    # NaN rows are ignored, not propagated
    assert np.isfinite(s2) and s2 == pytest.approx(4.0 / torch.cat([x[:7], x[8:]]).norm(dim=1).mean().item(), rel=1e-5)
    big = np.random.default_rng(0).normal(size=(5000, 8)).astype(np.float32)
    assert estimate_norm_scaling_factor(big, max_rows=1000) == pytest.approx(estimate_norm_scaling_factor(big), rel=0.05)


def test_tensor_numpy_memmap_give_identical_training(toy, tmp_path):
    X, _ = toy
    X = X[:3000]
    mm = np.lib.format.open_memmap(tmp_path / "acts.npy", mode="w+", dtype=np.float32, shape=tuple(X.shape))
    mm[:] = X.numpy()
    mm.flush()
    mm = np.load(tmp_path / "acts.npy", mmap_mode="r")
    kw = dict(d_sae=48, k=3, lr=1e-2, epochs=2, batch_size=256, progress=False, seed=4)
    a, ma = train_batchtopk(X, **kw)
    b, mb = train_batchtopk(X.numpy(), **kw)
    c, mc = train_batchtopk(mm, **kw)
    a2, _ = train_batchtopk(X, **kw)                                        # deterministic
    for other in (b, c, a2):
        for (n, p), q in zip(a.state_dict().items(), other.state_dict().values()):
            assert torch.equal(p, q), n
    assert ma.equals(mc)
    assert list(ma.columns) == ["epoch", "mse", "fvu", "l0", "dead_frac", "threshold", "aux_loss"]
    ref_cols = list(train_sae(X, 16, epochs=1, batch_size=512, progress=False)[1].columns)
    assert set(ref_cols) <= set(ma.columns)
    _, ml = train_batchtopk(X, **{**kw, "epochs": 1}, log_every=4)
    assert ml.step.tolist() == [4, 8, 12] and (ml.l0 == 3).all()            # 12 steps of 256 rows (last one short)


def test_nan_input_raises_naming_layer_and_step(toy):
    X, _ = toy
    X = X[:2048].clone()
    X[1500, 4] = float("nan")
    with pytest.raises(NonFiniteError, match=r"layer 7: .*step \d+ of epoch 1"):
        train_batchtopk(X, 32, k=2, batch_size=256, layer=7, progress=False)
    with pytest.raises(NonFiniteError, match=r"layer 3: the loss became NaN/inf at step 1\b"):
        # finite inputs whose squared error overflows float32 at the first step
        train_batchtopk(X[:2048].nan_to_num(0.0) * 1e20, 32, k=2, batch_size=256, layer=3, progress=False,
                        scale_inputs=False)


def test_save_load_round_trip(trained, toy, tmp_path):
    X, _ = toy
    sae, _ = trained
    folder = save_batchtopk(sae, tmp_path / "btk", metadata={"model_name": "toy", "hook_name": "blocks.0.hook_mlp_out"})
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["d_in"] == 32 and cfg["d_sae"] == 128
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["k"] == 3 and cfg["metadata"]["hook_name"] == "blocks.0.hook_mlp_out"
    from safetensors.torch import load_file
    w = load_file(str(folder / "sae_weights.safetensors"))
    assert {k: tuple(v.shape) for k, v in w.items()} == {"W_enc": (32, 128), "W_dec": (128, 32), "b_enc": (128,),
                                                          "b_dec": (32,), "threshold": (128,)}
    assert torch.all(w["threshold"] == sae.threshold)
    again = load_batchtopk(folder)
    assert torch.equal(again.encode(X[:2000]), sae.encode(X[:2000]))
    assert torch.equal(again(X[:50])[0], sae(X[:50])[0]) and not again.training
    assert again.k == 3 and again.metadata["model_name"] == "toy" and again.threshold.dim() == 0
    assert isinstance(load_any_sae(folder), BatchTopKSAE)
    l1 = SparseAutoencoder(32, 16, seed=0)
    l1_folder = l1.save(tmp_path / "l1")
    got = load_any_sae(l1_folder)
    assert isinstance(got, SparseAutoencoder) and torch.allclose(got.encode(X[:10]), l1.encode(X[:10]), atol=1e-6)
    again.save(tmp_path / "btk2")                                           # re-saving keeps the same config
    assert json.loads((tmp_path / "btk2" / "cfg.json").read_text()) == cfg
    with pytest.raises(FileNotFoundError):
        load_any_sae(tmp_path / "nothing")


def test_sae_lens_loads_it(trained, toy, tmp_path):
    "The saved folder is a valid SAELens JumpReLU SAE that computes the same codes (runs where sae_lens is installed)."
    sae_lens = pytest.importorskip("sae_lens")
    X, _ = toy
    sae, _ = trained
    folder = save_batchtopk(sae, tmp_path / "btk")
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    assert type(theirs).__name__ == "JumpReLUSAE"
    x = X[:500]
    with torch.no_grad():
        assert torch.allclose(theirs.encode(x), sae.encode(x), atol=1e-6)
        assert torch.allclose(theirs.decode(sae.encode(x)), sae.decode(sae.encode(x)), atol=1e-6)
    assert theirs.cfg.metadata.k == 3
    theirs.save_model(str(tmp_path / "theirs"))                            # and SAELens's own save loads here
    assert torch.equal(load_batchtopk(tmp_path / "theirs").encode(x), sae.encode(x))


def test_bf16_products_give_a_dictionary_of_equal_quality(toy):
    "The bf16 path (dense products in bf16, all else fp32) against the fp32 reference, same data and seed."
    X, _ = toy
    kw = dict(k=3, lr=3e-3, epochs=2, batch_size=256, progress=False)
    fp32, _ = train_batchtopk(X, 128, **kw)
    bf16, _ = train_batchtopk(X, 128, compute_dtype="bfloat16", **kw)
    assert fp32.metadata["compute_dtype"] == "float32" and bf16.metadata["compute_dtype"] == "bfloat16"
    a, b = evaluate_batchtopk(fp32, X)["fvu"], evaluate_batchtopk(bf16, X)["fvu"]
    assert abs(b - a) / a < 0.02, (a, b)                          # FVU within 2% relative
    assert not torch.equal(fp32.W_enc, bf16.W_enc)                # it really took the other path
