"Model diffing (chapter 8b): the reward scan by hand, paired rows, and a planted change whose effect is exact."
import numpy as np
import pytest
import torch

from rewardsae.model_diff import PairedRows, difference, plant_feature, reward_scan


def test_reward_scan_matches_a_hand_computation():
    g = np.random.default_rng(0)
    u = g.normal(size=200)
    f0 = np.maximum(u, 0) * 2.0                     # fires where utility is positive: tracks it
    f1 = np.where(np.arange(200) < 10, 1.0, 0.0)    # fires on 10 tokens only: too few to count
    f2 = np.zeros(200)                              # dead
    x = np.stack([f0, f1, f2], 1).astype(np.float32)
    df = reward_scan(lambda t: t, x, u, batch_size=64)
    assert df.r[0] == pytest.approx(np.corrcoef(f0, u)[0, 1], abs=1e-6)
    assert df.r[1] == pytest.approx(np.corrcoef(f1, u)[0, 1], abs=1e-6) and df.r[2] == 0
    assert df.mean_u_firing[0] == pytest.approx(u[u > 0].mean()) and df.n_firing.tolist() == [int((u > 0).sum()), 10, 0]
    assert df.tracks.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="200 activation rows but 3 utilities"):
        reward_scan(lambda t: t, x, u[:3])


def test_paired_rows_and_difference():
    a, b = np.arange(6.0).reshape(3, 2), np.arange(6.0).reshape(3, 2) * 10
    p = PairedRows(a, b)
    assert len(p) == 3 and p.shape == (3, 4) and p[1:2].tolist() == [[2, 3, 20, 30]]
    assert np.array_equal(difference(a, b, chunk=2), b - a)
    with pytest.raises(ValueError, match="paired arrays differ in shape"):
        PairedRows(a, b[:2])


def test_a_planted_feature_changes_one_layer_by_exactly_its_write():
    from rewardsae.divergence import layer_divergence
    from rewardsae.models import load_causal_lm, mlp
    model, tok = load_causal_lm("tiny-neox")
    texts = ["the cat sat on the mat and the dog ran to the park"] * 3 + ["a film about the sea, the sky and the rain"] * 3
    planted, info = plant_feature(model, tok, 2, " the", texts, seed=0)
    div = layer_divergence(model, planted).set_index("layer").divergence
    assert div.idxmax() == 2 and div.drop(2).max() == 0                 # only block 2's weights changed
    assert info["fires_on_token"] == 1.0 and abs(np.linalg.norm(info["direction"]) - 1) < 1e-6
    enc = tok(texts[:2], return_tensors="pt")
    outs = {}
    for name, m in (("base", model), ("planted", planted)):
        got = []
        h = mlp(m, 2).register_forward_hook(lambda mod, i, o: got.append(o.detach()))
        with torch.no_grad():
            m(**enc)
        h.remove()
        outs[name] = got[0]
    pm, bm = mlp(planted, 2), mlp(model, 2)
    h_in = []
    hk = pm.register_forward_pre_hook(lambda mod, a: h_in.append(a[0].detach()))
    with torch.no_grad():
        planted(**enc)
    hk.remove()
    unit = info["unit"]
    a_new = pm.act(pm.dense_h_to_4h(h_in[0]))[..., unit]
    a_old = bm.act(bm.dense_h_to_4h(h_in[0]))[..., unit]
    expected = a_new[..., None] * pm.dense_4h_to_h.weight[:, unit] - a_old[..., None] * bm.dense_4h_to_h.weight[:, unit]
    assert torch.allclose(outs["planted"] - outs["base"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="is 2 tokens|is 3 tokens|tokens for this tokenizer"):
        plant_feature(model, tok, 2, " cinematography", texts)


def test_the_pipeline_finds_a_planted_change(tmp_path):
    """Known answer through `rewardsae run --tuned`'s code path: a unit planted at layer 2 of tiny-neox to fire on
    " movie" and write a random direction. Divergence must put layer 2 first, and among the crosscoder's most changed
    latents there must be one that fires on " movie" whose decoder change points along the planted direction."""
    from rewardsae.crosscoder import load_crosscoder
    from rewardsae.data import load_imdb
    from rewardsae.models import load_causal_lm
    from rewardsae.pipeline import make_params, run_all
    model, tok = load_causal_lm("tiny-neox")
    texts = load_imdb("train", verbose=False).shuffle(seed=1).select(range(40))["text"]
    planted, info = plant_feature(model, tok, 2, " movie", texts, sharpness=8.0)
    planted.save_pretrained(tmp_path / "planted")
    tok.save_pretrained(tmp_path / "planted")
    st = run_all(make_params(model="tiny-neox", tuned=str(tmp_path / "planted"), preset="smoke", n_layers=1, n_docs=300,
                             max_length=64, k_features=3, k_table3=4, n_completions=4, model_diff=True, diff_layers=1,
                             out=str(tmp_path / "run")))
    assert st["summary"]["selected_layers"] == [2]
    div = {r["layer"]: r["divergence"] for r in st["summary"]["layers"]}
    assert max(v for l, v in div.items() if l != 2) == 0
    changed = [r for r in st["summary"]["model_diff"]["changed_latents"] if r["layer"] == 2]
    cc = load_crosscoder(st["model_diff"].folder / "crosscoder-L2")
    W = cc.decoders.detach()
    u = torch.as_tensor(info["direction"])
    cos = {r["latent"]: float((W[r["latent"], 1] - W[r["latent"], 0]) @ u / (W[r["latent"], 1] - W[r["latent"], 0]).norm())
           for r in changed}
    hits = [r for r in changed if cos[r["latent"]] > 0.95 and '"movie"' in r["description"]]
    assert hits, [(r["latent"], round(cos[r["latent"]], 3), r["description"][:60]) for r in changed]


WORDS = [" good", " film", " like", " one"]   # tiny-neox's 512-token vocabulary has few whole words


def test_the_pipeline_finds_a_planted_feature_at_the_tuned_end(tmp_path):
    """Known answer for a *new* feature: a unit planted at layer 2 of tiny-neox to fire on any of four words and write
    a random direction (chapter 8b does this with 18 positive words on SmolLM2). The crosscoder's most tuned-leaning
    latent (highest relative norm, >= 0.7) must have a tuned decoder along the planted direction, fire on those
    words, and be listed and described in the run's table."""
    from rewardsae.crosscoder import load_crosscoder
    from rewardsae.data import load_imdb
    from rewardsae.models import load_causal_lm
    from rewardsae.pipeline import make_params, run_all
    model, tok = load_causal_lm("tiny-neox")
    texts = load_imdb("train", verbose=False).shuffle(seed=1).select(range(80))["text"]
    planted, info = plant_feature(model, tok, 2, WORDS, texts, sharpness=8.0)
    assert info["token_ids"] == [tok(w).input_ids[0] for w in WORDS] and info["fires_on_token"] > 0.8
    planted.save_pretrained(tmp_path / "planted")
    tok.save_pretrained(tmp_path / "planted")
    st = run_all(make_params(model="tiny-neox", tuned=str(tmp_path / "planted"), preset="smoke", n_layers=1, n_docs=400,
                             max_length=64, sae_epochs=8, topk_k=8, k_features=3, k_table3=4, n_completions=4, model_diff=True,
                             diff_layers=1, out=str(tmp_path / "run")))
    assert st["summary"]["selected_layers"] == [2]
    cc = load_crosscoder(st["model_diff"].folder / "crosscoder-L2")
    rel = cc.relative_norm()
    top = int(rel.argmax())
    d_t = cc.decoders.detach()[top, 1]
    cos = float(d_t @ torch.as_tensor(info["direction"]) / d_t.norm())
    assert rel[top] >= 0.7 and cos > 0.9, (top, float(rel[top]), cos)
    rows = [r for r in st["summary"]["model_diff"]["changed_latents"] if r["layer"] == 2 and r["latent"] == top]
    assert rows and rows[0]["kind"] in ("tuned_leaning", "tuned_only"), rows
    assert rows[0]["description"]                                   # explained by the run's explainer
    # it fires on the planted words (the unit, in a random model, also fires on some other tokens)
    from rewardsae.model_diff import PairedRows, planted_match
    from rewardsae.pipeline import activation_store
    sb, stt = activation_store(st["activations"]["base"]), activation_store(st["activations"]["rlhf"])
    m = planted_match(cc, info, PairedRows(sb.activations(2), stt.activations(2)), sb.token_id, top=3).set_index("latent")
    assert top in m.index and m.rel_rank[top] == 1
    assert m.fires_on_token[top] > 0.8 and m.fires_on_token[top] > 3 * m.fires_elsewhere[top], m
