"""Layer divergence (SPEC §1.2): exact values on known perturbations, ranking, refusal of mismatched pairs;
the Adam random-walk floor, the noise test and the output-based measure (issue #16 item 5)."""
import copy
import json
import math

import pandas as pd
import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM, GPTNeoXConfig,
                          GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM)

from rewardsae.divergence import (adam_momentum_factor, layer_divergence, noise_test, output_divergence, plot_divergence,
                                  random_walk_copy, random_walk_floor, select_layers)
from rewardsae.models import blocks, load_causal_lm


def neox(layers=4, hidden=32):
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers,
                                            num_attention_heads=4, intermediate_size=64))


def llama(layers=4):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                        num_key_value_heads=2, intermediate_size=64))


def test_identical_models_have_zero_divergence():
    m = neox()
    df = layer_divergence(m, copy.deepcopy(m))
    assert list(df.layer) == [0, 1, 2, 3] and (df.divergence == 0).all()


def test_known_perturbations_give_exact_values():
    base = neox()
    tuned = copy.deepcopy(base)
    b = blocks(tuned)
    # block 1: one element + 3 -> norm 3
    # block 2: a 3-4-5 pattern (norm 5) in one tensor and 12 (norm 12) in another -> 5 + 12 = 17 (not sqrt(169)=13)
    # block 3: a bias vector of +0.5 on 64 entries -> norm 0.5 * 8 = 4
    with torch.no_grad():
        b[1].attention.dense.weight[2, 5] += 3.0
        w = b[2].mlp.dense_h_to_4h.weight
        w[0, 0] += 3.0
        w[1, 1] += 4.0
        b[2].input_layernorm.weight[7] -= 12.0
        b[3].mlp.dense_h_to_4h.bias += 0.5
        tuned.get_output_embeddings().weight += 100.0   # outside every block: must not count
    df = layer_divergence(base, tuned)
    assert df.divergence.tolist() == pytest.approx([0.0, 3.0, 17.0, 4.0], abs=1e-5)
    assert select_layers(df, n=2) == [2, 3]
    assert select_layers(df, n=3, mode="lowest") == [0, 1, 3]
    assert select_layers(df, n=4) == [2, 3, 1, 0]


def test_llama_and_gpt2_blocks_are_found():
    base = llama()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        blocks(tuned)[2].mlp.down_proj.weight[0, :4] += 1.0          # norm 2
        blocks(tuned)[2].self_attn.q_proj.weight[3, 3] -= 2.5         # norm 2.5
    assert layer_divergence(base, tuned).divergence.tolist() == pytest.approx([0, 0, 4.5, 0], abs=1e-5)
    torch.manual_seed(0)
    g = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    g2 = copy.deepcopy(g)
    with torch.no_grad():
        blocks(g2)[0].mlp.c_fc.weight[1, 1] += 6.0
    assert layer_divergence(g, g2).divergence.tolist() == pytest.approx([6.0, 0.0], abs=1e-5)


def test_mismatched_pairs_are_refused_naming_the_mismatch():
    with pytest.raises(ValueError, match="architectures differ.*gpt_neox.*llama"):
        layer_divergence(neox(), llama())
    with pytest.raises(ValueError, match="block counts differ"):
        layer_divergence(neox(layers=4), neox(layers=3))
    with pytest.raises(ValueError, match=r"gpt_neox\.embed_in\.weight.*\(50, 32\).*\(50, 48\)"):
        layer_divergence(neox(hidden=32), neox(hidden=48))
    with pytest.raises(TypeError):
        layer_divergence(neox(), 3)


def test_select_layers_ties_and_bad_input():
    df = pd.DataFrame({"layer": [0, 1, 2, 3], "divergence": [1.0, 5.0, 1.0, 5.0]})
    assert select_layers(df, n=2) == [1, 3]
    assert select_layers(df, n=2, mode="lowest") == [0, 2]
    with pytest.raises(ValueError, match="mode"):
        select_layers(df, mode="middle")
    with pytest.raises(ValueError, match="out of range"):
        select_layers(df, n=5)
    with pytest.raises(ValueError, match="out of range"):
        select_layers(df, n=0)


def test_plot_writes_png_and_pdf(tmp_path):
    df = pd.DataFrame({"layer": [0, 1, 2], "divergence": [1.0, 3.0, 2.0]})
    fig = plot_divergence(df, selected=[1], path=tmp_path / "fig3")
    assert (tmp_path / "fig3.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "fig3.pdf").read_bytes()[:4] == b"%PDF"
    heights = [p.get_height() for p in fig.axes[0].patches]
    colors = [p.get_facecolor() for p in fig.axes[0].patches]
    assert heights == [1.0, 3.0, 2.0]
    assert colors[1] != colors[0] and colors[0] == colors[2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig3.pdf", "fig3.png"]


# ---- issue #16 item 5: Adam random-walk floor, noise test, output-based measure ----

TEXTS = ["This movie was a wonderful surprise, I loved every minute of it.",
         "Terrible acting and a plot that made no sense at all, two hours I will never get back.",
         "An average film."]


@pytest.fixture(scope="module")
def tiny():
    return load_causal_lm("tiny-neox", device="cpu")


def test_random_walk_floor_matches_hand_computation_and_simulation(tiny):
    model, _ = tiny
    lr, T = 1e-3, 25
    floor = random_walk_floor(model, lr=lr, updates=T)
    assert list(floor.columns) == ["layer", "floor"] and list(floor.layer) == [0, 1, 2, 3]
    # tiny-neox block (d=64, 4*d=256, attention and MLP biases): 2 layer norms (weight+bias, 64 each),
    # qkv 192x64 + 192, dense 64x64 + 64, h_to_4h 256x64 + 256, 4h_to_h 64x256 + 64
    shapes = [(64,), (64,), (64,), (64,), (192, 64), (192,), (64, 64), (64,), (256, 64), (256,), (64, 256), (64,)]
    hand = lr * math.sqrt(T) * sum(math.sqrt(math.prod(s)) for s in shapes)
    assert sorted(tuple(p.shape) for n, p in model.named_parameters() if n.startswith("gpt_neox.layers.0.")) \
        == sorted(shapes)
    assert floor.floor.tolist() == pytest.approx([hand] * 4, rel=1e-12)
    walked = random_walk_copy(model, lr, T, seed=0)
    div = layer_divergence(model, walked)
    assert ((div.divergence / floor.floor - 1).abs() < 0.02).all()
    # every block element moved by an even multiple of lr up to T*lr in size (a sum of T signs); nothing else moved
    pw = dict(walked.named_parameters())
    for name, p in model.named_parameters():
        steps = ((pw[name] - p) / lr).double()
        if name.startswith("gpt_neox.layers."):
            assert torch.allclose(steps, steps.round(), atol=1e-2) and steps.abs().max() <= T + 1e-3
            assert (steps.round() % 2 == T % 2).all()
        else:
            assert (steps == 0).all()


def test_adam_momentum_factor_matches_torch_adam_on_noise(tiny):
    # closed form against a direct sum
    T, b1 = 30, 0.9
    c = [sum((1 - b1) * b1 ** (t - s) / (1 - b1 ** t) for t in range(s, T + 1)) for s in range(1, T + 1)]
    assert adam_momentum_factor(T, b1) == pytest.approx(math.sqrt(sum(x * x for x in c) / T), rel=1e-12)
    assert adam_momentum_factor(7, 0.0) == pytest.approx(1.0)
    assert adam_momentum_factor(1, 0.9) == pytest.approx(1.0)
    # torch Adam on pure-noise gradients, T = 50 steps, on a copy of tiny-neox: the floor with beta1 is within 3%
    model, _ = tiny
    lr, T = 1e-3, 50
    tuned = copy.deepcopy(model)
    params = [p for n, p in tuned.named_parameters() if n.startswith("gpt_neox.layers.")]
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))
    torch.manual_seed(0)
    for _ in range(T):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    ratio = layer_divergence(model, tuned).divergence / random_walk_floor(model, lr, T, beta1=0.9).floor
    assert ((ratio - 1).abs() < 0.03).all()
    plain = random_walk_floor(model, lr, T).floor
    assert (random_walk_floor(model, lr, T, beta1=0.9).floor / plain).tolist() == \
        pytest.approx([adam_momentum_factor(T, 0.9)] * 4)


def test_random_walk_floor_refuses_bad_arguments(tiny):
    model, _ = tiny
    for lr, T in [(0.0, 10), (-1e-3, 10), (1e-3, 0), (1e-3, 2.5), (float("nan"), 3)]:
        with pytest.raises(ValueError):
            random_walk_floor(model, lr=lr, updates=T)
    with pytest.raises(ValueError, match="beta1"):
        random_walk_floor(model, lr=1e-3, updates=10, beta1=1.0)


def test_output_divergence_is_zero_for_an_identical_copy(tiny):
    model, tok = tiny
    df = output_divergence(model, copy.deepcopy(model), tok, TEXTS)
    assert list(df.columns) == ["layer", "output_change"] and list(df.layer) == [0, 1, 2, 3]
    assert (df.output_change == 0).all()


def test_output_divergence_removes_upstream_drift(tiny):
    model, tok = tiny
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        torch.manual_seed(0)
        for p in blocks(tuned)[2].mlp.parameters():
            p += 0.05 * torch.randn_like(p)
    df = output_divergence(model, tuned, tok, TEXTS)
    assert df.output_change[2] > 1e-3
    assert (df.output_change.drop(index=2).abs() < 1e-6).all()   # blocks 0, 1 upstream; block 3 gets base input
    assert select_layers(df, n=1, column="output_change") == [2]
    assert training_modes_restored(model, tuned)


def training_modes_restored(*models):
    "No hook is left behind and the models are back in eval mode (as loaded)."
    return all(not b._forward_hooks and not b._forward_pre_hooks and not m.training
               for m in models for b in blocks(m))


def test_output_divergence_ignores_padding(tiny):
    model, tok = tiny
    tuned = random_walk_copy(model, 1e-3, 10)
    short, long = TEXTS[2], TEXTS[1]
    assert len(tok(short)["input_ids"]) < len(tok(long)["input_ids"])
    alone = output_divergence(model, tuned, tok, [short, long], batch_size=1)     # no padding anywhere
    padded = output_divergence(model, tuned, tok, [short, long], batch_size=2)    # short is right-padded
    assert padded.output_change.tolist() == pytest.approx(alone.output_change.tolist(), rel=1e-5, abs=1e-7)
    assert (alone.output_change > 0).all()


@pytest.mark.parametrize("make", ["gpt2", "gpt_neo", "llama"])
def test_output_divergence_other_architectures(make):
    torch.manual_seed(0)
    if make == "gpt2":
        m = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=32, n_layer=3, n_head=4, n_positions=64))
    elif make == "gpt_neo":
        m = GPTNeoForCausalLM(GPTNeoConfig(vocab_size=50, hidden_size=32, num_layers=3, num_heads=4,
                                           attention_types=[[["global", "local"], 1], [["global"], 1]],
                                           max_position_embeddings=64, window_size=8))
    else:
        m = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64))
    m.eval()
    tuned = copy.deepcopy(m)
    with torch.no_grad():
        for p in blocks(tuned)[1].mlp.parameters():
            p += 0.05 * torch.randn_like(p)

    class Tok:   # a stand-in tokenizer: one token per character
        pad_token_id = 0
        def __call__(self, texts, truncation=True, max_length=64):
            return {"input_ids": [[1 + ord(c) % 49 for c in t][:max_length] for t in texts]}

    assert (output_divergence(m, copy.deepcopy(m), Tok(), TEXTS).output_change == 0).all()
    df = output_divergence(m, tuned, Tok(), TEXTS, batch_size=2)
    assert df.output_change[1] > 1e-3 and df.output_change[0] < 1e-6 and df.output_change[2] < 1e-6


def test_output_divergence_refuses_bad_input(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="non-empty"):
        output_divergence(model, copy.deepcopy(model), tok, [])
    with pytest.raises(ValueError, match="non-empty"):
        output_divergence(model, copy.deepcopy(model), tok, "one string")
    with pytest.raises(ValueError, match="architectures differ"):
        output_divergence(model, llama(), tok, TEXTS)
    with pytest.raises(ValueError, match="block counts differ"):
        output_divergence(neox(layers=4), neox(layers=3), tok, TEXTS)


def table(ratios, floor=2.0):
    layers = list(range(len(ratios)))
    return (pd.DataFrame({"layer": layers, "divergence": [r * floor for r in ratios]}),
            pd.DataFrame({"layer": layers, "floor": [floor] * len(ratios)}))


def test_noise_test_planted_layer_is_distinguishable():
    rng = torch.Generator().manual_seed(0)
    ratios = (1.0 + 0.01 * torch.randn(12, generator=rng)).tolist()
    ratios[7] *= 3.0
    div, floor = table(ratios)
    out = noise_test(div, floor, select_layers(div, n=1))
    assert select_layers(div, n=1) == [7]
    assert out["distinguishable"] is True and out["robust_z"][7] > 3
    assert out["ratio"][7] == pytest.approx(ratios[7])
    assert set(out) == {"ratio", "robust_z", "distinguishable", "rule"} and isinstance(out["rule"], str)
    assert json.loads(json.dumps(out))["distinguishable"] is True
    assert all(type(k) is int and type(v) is float for d in (out["ratio"], out["robust_z"]) for k, v in d.items())
    # selecting a noise layer alongside the planted one fails the rule ("every selected layer")
    assert noise_test(div, floor, select_layers(div, n=2))["distinguishable"] is False


def test_noise_test_flat_table_is_not_distinguishable():
    # 30 layers, ratios 1 +- 1% noise. The top-5 must fail for every seed (false-positive rate about 3e-4);
    # a top-1 alone passes z >= 3 on pure noise about 11% of the time (see the notebook), so one seed only.
    for seed in range(10):
        div, floor = table((1.0 + 0.01 * torch.randn(30, generator=torch.Generator().manual_seed(seed))).tolist())
        assert noise_test(div, floor, select_layers(div, n=5))["distinguishable"] is False
    div, floor = table((1.0 + 0.01 * torch.randn(30, generator=torch.Generator().manual_seed(2))).tolist())
    assert noise_test(div, floor, select_layers(div, n=1))["distinguishable"] is False


def test_noise_test_zero_mad():
    div, floor = table([1.0, 1.0, 1.0, 1.0, 2.0])
    out = noise_test(div, floor, [4])
    assert out["robust_z"] == {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0, 4: math.inf}
    assert out["distinguishable"] is True
    div, floor = table([1.0] * 4)
    assert noise_test(div, floor, [0])["distinguishable"] is False
    assert noise_test(div, floor, [0], z=0.0)["distinguishable"] is True


def test_noise_test_refuses_bad_input():
    div, floor = table([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-empty"):
        noise_test(div, floor, [])
    with pytest.raises(ValueError, match=r"\[5\]"):
        noise_test(div, floor, [5])
    with pytest.raises(ValueError, match="same"):
        noise_test(div, floor.iloc[:2], [0])
    with pytest.raises(ValueError, match="floor"):
        noise_test(div, floor.rename(columns={"floor": "x"}), [0])


def test_select_layers_by_another_column():
    df = pd.DataFrame({"layer": [0, 1, 2], "divergence": [3.0, 2.0, 1.0], "output_change": [0.1, 0.5, 0.3]})
    assert select_layers(df, n=2) == [0, 1]
    assert select_layers(df, n=2, column="output_change") == [1, 2]
    assert select_layers(df, n=1, mode="lowest", column="output_change") == [0]
    with pytest.raises(ValueError, match="'nope'"):
        select_layers(df, column="nope")


def test_plot_with_floor(tmp_path):
    df = pd.DataFrame({"layer": [0, 1, 2], "divergence": [1.0, 3.0, 2.0]})
    floor = pd.DataFrame({"layer": [2, 1, 0], "floor": [0.9, 0.8, 0.7]})   # matched by layer, not by row
    fig = plot_divergence(df, selected=[1], path=tmp_path / "fig3", floor=floor)
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == [1.0, 3.0, 2.0]
    (marks,) = ax.collections
    ys = sorted({round(float(y), 6) for seg in marks.get_segments() for _, y in seg})
    assert ys == [0.7, 0.8, 0.9]
    assert "Adam random-walk floor" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert (tmp_path / "fig3.png").exists() and (tmp_path / "fig3.pdf").exists()
    fig2 = plot_divergence(df, floor=pd.Series([0.5, 0.5, 0.5]))      # a Series aligned with df, no selection
    assert [t.get_text() for t in fig2.axes[0].get_legend().get_texts()] == ["Adam random-walk floor"]
    assert not plot_divergence(df).axes[0].collections                 # no floor: as before
    assert plot_divergence(df, ylabel="output change").axes[0].get_ylabel() == "output change"
    with pytest.raises(ValueError, match="2 values"):
        plot_divergence(df, floor=[1.0, 2.0])


def test_output_floor_is_the_random_walks_output_change_and_the_summary_by_hand(tiny):
    from rewardsae.divergence import output_floor, output_floor_summary
    model, tok = tiny
    lr, T = 1e-3, 10
    fl = output_floor(model, tok, TEXTS, lr, T, seeds=(0, 1))
    walk0 = output_divergence(model, random_walk_copy(model, lr, T, seed=0), tok, TEXTS)
    assert fl.floor_0.tolist() == pytest.approx(walk0.output_change.tolist(), rel=1e-6)
    assert fl.output_floor.tolist() == pytest.approx(((fl.floor_0 + fl.floor_1) / 2).tolist())
    assert (fl.floor_0 != fl.floor_1).any()                      # two seeds, two walks
    # by hand: output change 2x the floor except block 3 (6x); floor shape [1, 2, 3, 4] -> r of [2, 4, 6, 24] vs it
    df = pd.DataFrame({"layer": [0, 1, 2, 3], "output_change": [2.0, 4.0, 6.0, 24.0], "output_floor": [1.0, 2.0, 3.0, 4.0],
                       "floor_0": [1.0, 2.0, 3.0, 4.0], "floor_1": [1.0, 5.0, 3.0, 0.5]})
    s = output_floor_summary(df, n=2)
    assert (s["ratio_min"], s["ratio_median"], s["ratio_max"]) == (2.0, 2.0, 6.0)
    assert s["shape_r"] == pytest.approx(pd.Series([2, 4, 6, 24.0]).corr(pd.Series([1, 2, 3, 4.0])))
    assert s["top"] == [3, 2] and s["floor_top"] == [3, 2] and s["top_overlap"] == 2
    assert s["seed_top"] == {"0": [3, 2], "1": [1, 2]} and s["seed_top_overlap"] == 1
    with pytest.raises(ValueError, match="output_floor"):
        output_floor_summary(df.drop(columns="output_floor"))


def test_divergence_section_says_whether_the_shape_follows_the_floor():
    from types import SimpleNamespace
    from rewardsae.divergence import divergence_section
    f = {"n": 3, "ratio_min": 2.7, "ratio_median": 5.3, "ratio_max": 8.3, "floor_min": 0.0009, "floor_max": 0.0045,
         "shape_r": 0.86, "top": [16, 17, 14], "floor_top": [3, 5, 12], "top_overlap": 0,
         "seed_top": {"0": [3, 5, 6], "1": [3, 5, 12]}, "seed_top_overlap": 2}
    high = divergence_section({"summary": f}, SimpleNamespace())
    low = divergence_section({"summary": {**f, "shape_r": 0.1}}, SimpleNamespace())
    assert "0.0009–0.0045" in high and "2.7–8.3× that floor (median 5.3×)" in high and "follows the random walk's (Pearson r 0.86)" in high
    assert "does not follow" in low and "sensitivity" not in low and "(2 shared by all)" in low
    assert divergence_section({"summary": None}, SimpleNamespace()) == ""
