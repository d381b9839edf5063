"Layer divergence (SPEC §1.2): exact values on known perturbations, ranking, refusal of mismatched pairs."
import copy

import pandas as pd
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from rewardsae.divergence import layer_divergence, plot_divergence, select_layers
from rewardsae.models import blocks


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
