"Calibrating model diffing (chapter 8b1): the shuffled null by hand, plants by hand, thresholds and the detection limit, a toy run, the stage end to end."
import numpy as np
import pytest
import torch

from rewardsae.crosscoder import BatchTopKCrosscoder, evaluate_crosscoder, train_crosscoder
from rewardsae.diff_calibration import (above_null, add_plants, calibrate_layer, detection_limit, find_plant, mean_change,
                                        null_thresholds, plant_sets, random_directions, shuffled_null)
from rewardsae.model_diff import decoder_change


def test_shuffled_null_moves_the_same_differences_to_other_tokens():
    g = np.random.default_rng(0)
    xb = g.normal(size=(50, 3)).astype(np.float32)
    dx = g.normal(size=(50, 3)).astype(np.float32) * np.arange(50)[:, None]        # row i changes by about i
    null = shuffled_null(xb, xb + dx, seed=0, chunk=7)
    moved = null - xb
    perm = [int(np.argmin(np.abs(dx - r).sum(1))) for r in moved]                   # which row's change landed here
    assert np.allclose(moved, dx[perm], atol=1e-5) and sorted(perm) == list(range(50)) and perm != list(range(50))
    assert mean_change(xb, xb + dx, chunk=7) == pytest.approx(np.linalg.norm(dx, axis=1).mean(), rel=1e-5)
    with pytest.raises(ValueError, match="differ in shape"):
        shuffled_null(xb, xb[:3])


def test_plants_are_disjoint_word_sets_of_the_asked_coverage_and_add_exactly_their_write():
    tok = np.repeat(np.arange(200), np.arange(200) % 10 + 1)                         # token t occurs t % 10 + 1 times
    sets = plant_sets(tok, 3, frac=0.02, seed=1)
    n = len(tok)
    for s in sets:
        cover = np.isin(tok, s).sum()
        assert 0.02 * n <= cover < 0.02 * n + 0.005 * n and len(s) >= 4           # each word <= frac/4 of the rows
    assert len(set(np.concatenate(sets))) == sum(len(s) for s in sets)
    u = random_directions(3, 4, seed=0)
    assert np.allclose(np.linalg.norm(u, axis=1), 1)
    x = np.ones((n, 4), dtype=np.float32)
    xp = add_plants(x, tok, sets, u, [1.0, 2.0, 3.0])
    assert np.allclose(xp[np.isin(tok, sets[2])], 1 + 3 * u[2]) and (xp[~np.isin(tok, np.concatenate(sets))] == 1).all()
    with pytest.raises(ValueError, match="only 0 of the 3 planted sets"):
        plant_sets(tok, 3, frac=0.5)


def _cc(dec_base, dec_tuned):
    "A crosscoder with the given decoder rows (m × d each)."
    b, t = torch.as_tensor(dec_base, dtype=torch.float32), torch.as_tensor(dec_tuned, dtype=torch.float32)
    cc = BatchTopKCrosscoder(b.shape[1], b.shape[0], k=1)
    with torch.no_grad():
        cc.decoders[:, 0] = b
        cc.decoders[:, 1] = t
    return cc


def test_null_thresholds_and_a_plant_found_either_way():
    e = torch.eye(4)
    # null: 5 latents; tuned norms 1, 1, 1, 1.5, 3 against base 1 -> relative norms .5, .5, .5, .6, .75
    null = _cc(e[[0, 1, 2, 3, 0]], e[[0, 1, 2, 3, 0]] * torch.tensor([1, 1, 1, 1.5, 3.0])[:, None])
    live = np.array([True, True, True, True, False])                                # the last one does not count
    thr = null_thresholds(null, live, quantile=0.75)
    assert thr["relative_norm_high"] == pytest.approx(np.quantile([.5, .5, .5, .6], .75))
    assert thr["decoder_change"] == pytest.approx(np.quantile([0, 0, 0, .2], .75)) and thr["max_decoder_change"] == pytest.approx(.2)
    assert above_null([0.0, 0.3], [0.5, 0.5], thr).tolist() == [False, True]
    # every latent of a crosscoder at 0.46 (one model's scale moved all alike): re-centred on the null's median 0.5, none stands out
    assert thr["relative_norm_median"] == 0.5 and above_null([0.0, 0.0], [0.46, 0.46], thr).tolist() == [True, True]
    assert above_null([0.0, 0.0], [0.46, 0.56], thr, median=0.46).tolist() == [False, True]
    u = e[3].numpy()
    own = _cc(e[[0, 1]], torch.stack([e[0], 3 * e[3]]))                             # latent 1: its own tuned latent along u
    r = find_plant(own, u, thr)
    assert r["found"] and r["latent"] == 1 and r["via"] == "tuned decoder" and r["relative_norm"] == pytest.approx(.75)
    shared = _cc(e[[0, 1]], torch.stack([e[0], 0.8 * e[1] + 0.6 * e[3]]))           # latent 1: shared (same norms), turned towards u
    r = find_plant(shared, u, thr)
    assert r["found"] and r["latent"] == 1 and r["via"] == "decoder change" and r["relative_norm"] == pytest.approx(.5)
    assert r["cosine"] == pytest.approx(0.6 / np.hypot(0.2, 0.6)) and r["decoder_change"] == pytest.approx(np.hypot(0.2, 0.6) / 2)
    assert not find_plant(own, e[2].numpy(), thr)["found"]                          # a direction nothing writes
    assert detection_limit([0.5, 1, 2, 4], [True, False, True, True]) == 2 and detection_limit([1, 2], [True, False]) is None


def test_identical_inputs_keep_the_decoders_bit_identical_whatever_was_learnt():
    "Why an unmodified copy is no null: the decoders start equal and identical inputs keep them so, at any lr."
    from rewardsae.crosscoder import toy_pairs
    xb = toy_pairs(n=4_000, d=16)[0].numpy()
    for lr in (1e-12, 1e-2):
        cc, _ = train_crosscoder(xb, xb, d_sae=32, k=3, lr=lr, epochs=1, batch_size=512, progress=False)
        W = cc.decoders.detach()
        assert torch.equal(W[:, 0], W[:, 1])


@pytest.fixture(scope="module")
def toy_ft():
    "40 sparse features in 64 dims, each written by the tuned model slightly turned; a token id per row."
    g = torch.Generator().manual_seed(0)
    n, d, F = 24_000, 64, 40
    dirs = torch.randn(F, d, generator=g); dirs /= dirs.norm(dim=1, keepdim=True)
    turned = dirs + 0.1 * torch.randn(F, d, generator=g) / d ** 0.5; turned /= turned.norm(dim=1, keepdim=True)
    a = (torch.rand(n, F, generator=g) < 0.05) * (0.5 + torch.rand(n, F, generator=g))
    tok = np.minimum(np.random.default_rng(0).zipf(1.3, n), 400)
    return (a @ dirs).numpy(), (a @ turned).numpy(), tok


def test_calibration_separates_a_real_change_from_the_null_and_finds_strong_plants(toy_ft):
    xb, xt, tok = toy_ft
    train = lambda a, b, name: train_crosscoder(a, b, d_sae=120, k=3, lr=1e-2, epochs=2, batch_size=512, progress=False)[0]
    with pytest.raises(ValueError, match="strengths must be positive"):
        calibrate_layer(train, xb, xt, tok, strengths=(0, 1))
    cal, ccs = calibrate_layer(train, xb, xt, tok, strengths=(0.25, 8), plant_frac=0.02)
    cc = train(xb, xt, "real")
    live = evaluate_crosscoder(cc, xb, xt)[1] >= 1e-3
    change = decoder_change(cc)[0][live]
    assert np.median(change) > 2 * cal["null"]["decoder_change"]                   # every feature turned: most stand out
    assert cal["null"]["max_decoder_change"] < change.max()
    weak, strong = cal["plants"]
    assert strong["found"] and strong["cosine"] > 0.8 and not weak["found"] and cal["detection_limit"] == 8
    assert cal["rl_mean_change"] == pytest.approx(mean_change(xb, xt)) and strong["write_norm"] == pytest.approx(8 * cal["rl_mean_change"])


def _fake_run(tmp_path, tuned, layer: int, n_docs: int = 400):
    "A run folder with just what the stage reads: both models' activations at `layer` and a one-epoch large SAE each."
    from rewardsae.activations import harvest_activations
    from rewardsae.batchtopk import save_batchtopk, train_batchtopk
    from rewardsae.models import load_causal_lm
    from rewardsae.pipeline import activation_store, make_params, review_texts
    from rewardsae.stages import cached_stage
    p = make_params(model="tiny-neox", preset="smoke", n_docs=n_docs, max_length=64, sae_epochs=8, topk_k=8, sae_batch_size=256,
                    out=str(tmp_path / "run")).resolved()
    run, texts = tmp_path / "run", review_texts(p)
    acts, saes = {}, {}
    for role, (model, tok) in (("base", load_causal_lm("tiny-neox")), ("rlhf", tuned)):
        def harvest(folder, model=model, tok=tok):
            harvest_activations(model, tok, texts, [layer], folder / "acts", max_length=64, progress=False)
            return {}
        acts[role] = cached_stage(run, f"activations-{role}", {"role": role}, harvest, log=None)
        def sae(folder, role=role):
            x = activation_store(acts[role]).activations(layer)
            save_batchtopk(train_batchtopk(x, 2 * x.shape[1], k=8, epochs=1, batch_size=512, progress=False)[0], folder / "sae")
            return {}
        saes[(role, layer, "large", p.sae_seeds[0])] = cached_stage(run, f"sae-{role}", {"role": role}, sae, deps=(acts[role],), log=None)
    return p, run, acts, saes


def test_the_stage_reports_a_planted_feature_beyond_its_null(tmp_path):
    """The stage end to end on tiny-neox with a unit planted at layer 2 (four words, a random direction): its null,
    its planted features, and the real planted latent reported as beyond the null, with the verdict first."""
    from rewardsae.crosscoder import load_crosscoder
    from rewardsae.data import load_imdb
    from rewardsae.model_diff import model_diff_section, plant_feature, stage_model_diff
    from rewardsae.models import load_causal_lm
    model, tok = load_causal_lm("tiny-neox")
    texts = load_imdb("train", verbose=False).shuffle(seed=1).select(range(80))["text"]
    planted, info = plant_feature(model, tok, 2, [" good", " film", " like", " one"], texts, sharpness=8.0)
    p, run, acts, saes = _fake_run(tmp_path, (planted, tok), 2)
    with pytest.raises(ValueError, match="strengths must be positive"):
        stage_model_diff(p, run, acts, saes, [2], strengths=(-1,))
    md = stage_model_diff(p, run, acts, saes, [2], strengths=(1, 16), plant_frac=0.01).result
    cal = md["layers"]["2"]["calibration"]
    assert [q["strength"] for q in cal["plants"]] == [1, 16] and cal["null"]["n_live"] > 0
    cc = load_crosscoder(run / "stages" / "model_diff" / "crosscoder-L2")
    top = int(cc.relative_norm().argmax())
    d_t = cc.decoders.detach()[top, 1]
    assert float(d_t @ torch.as_tensor(info["direction"]) / d_t.norm()) > 0.8                 # the planted latent
    assert float(cc.relative_norm()[top]) > cal["null"]["relative_norm_high"]                  # beyond the null
    rows = [r for r in md["changed_latents"] if r["layer"] == 2]
    assert any(r["latent"] == top and r["kind"] in ("tuned_only", "tuned_leaning", "tuned_side") for r in rows), rows
    text = model_diff_section(md, p)
    assert text.lstrip().startswith("## Model diffing") and "At layer 2," in text and "nan" not in text
