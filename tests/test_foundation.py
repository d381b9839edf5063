"Foundation: data split, utility reward, model loading and the architecture adapter."
import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM, GPTNeoXConfig,
                          GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM)

from rewardsae.data import load_imdb, split_packaged, packaged_imdb_frame, utility_table
from rewardsae.models import ModelLoadError, block_prefix, blocks, load_causal_lm, mlp
from rewardsae.rewards import utility_reward, words


# ---- utility reward (eq. 3), hand-computed -------------------------------------------------------------
def test_reward_vader_values_by_hand():
    # VADER: great = 3.1, terrible = -2.1; "movie", "the", "a" are not in the lexicon.
    assert utility_reward(["A great, great film."]) == pytest.approx([6.2 / 5])
    assert utility_reward(["The movie was TERRIBLE!!!"]) == pytest.approx([-2.1 / 5])
    assert utility_reward(["the movie", ""]) == [0.0, 0.0]


def test_reward_punctuation_does_not_stick():
    t = {"good": 2.0, "bad": -3.0}
    assert utility_reward(['"Good," good... BAD!'], t) == pytest.approx([(2 + 2 - 3) / 5])
    assert words("(good)bad;good.", t) == ["good", "bad", "good"]


def test_reward_clips_at_ten():
    t = {"x": 4.0, "y": -4.0}
    assert utility_reward(["x " * 20, "y " * 20, "x " * 12], t) == [10.0, -10.0, pytest.approx(9.6)]


def test_reward_empty_and_bad_input():
    assert utility_reward([]) == []
    with pytest.raises(TypeError):
        utility_reward("a single string")


def test_hyphenated_words_scored_by_parts_unless_listed():
    assert words("well-made", {"well-made": 1.0}) == ["well-made"]
    assert words("well-made", {}) == ["well", "made"]


def test_utility_table_is_vader():
    U = utility_table()
    assert 7000 < len(U) < 8000
    assert U["great"] == 3.1 and U["terrible"] == -2.1 and min(U.values()) >= -4 and max(U.values()) <= 4


# ---- IMDb --------------------------------------------------------------------------------------------
def test_packaged_split_sizes_disjoint_balanced_deterministic():
    df = packaged_imdb_frame()
    assert len(df) == 25_000
    s = split_packaged(df, seed=0)
    tr, te = s["train"], s["test"]
    assert len(tr) == len(te) == 12_500
    assert not set(tr) & set(te)
    assert not set(df.text[tr]) & set(df.text[te])          # copies of a text stay together
    assert df.label[tr].sum() == df.label[te].sum() == 6_250
    assert (split_packaged(df, seed=0)["train"] == tr).all()
    assert not (split_packaged(df, seed=1)["train"] == tr).all()


def test_load_imdb_cleans_html_and_refuses_bad_args(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ds = load_imdb("test", source="packaged")
    assert ds.column_names == ["text", "label"] and len(ds) == 12_500
    assert not any("<br" in t for t in ds["text"][:2000])
    with pytest.raises(ValueError, match="unknown split"):
        load_imdb("validation")
    with pytest.raises(ValueError, match="unknown IMDb source"):
        load_imdb("train", source="kaggle")
    with pytest.raises(ConnectionError, match="unreachable"):
        load_imdb("train", source="hub")


# ---- models --------------------------------------------------------------------------------------------
def tiny(kind):
    torch.manual_seed(0)
    common = dict(vocab_size=100)
    if kind == "gpt_neox":
        return GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, **common))
    if kind == "gpt_neo":
        return GPTNeoForCausalLM(GPTNeoConfig(hidden_size=32, num_layers=3, num_heads=4, attention_types=[[["global"], 3]], **common))
    if kind == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=4, **common))
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64, **common))


@pytest.mark.parametrize("kind", ["gpt_neox", "gpt_neo", "gpt2", "llama"])
def test_adapter_finds_blocks_and_mlps(kind):
    model = tiny(kind)
    assert len(blocks(model)) == 3
    names = {n for n, _ in model.named_parameters()}
    for layer in range(3):
        pre = block_prefix(model, layer)
        own = {n for n in names if n.startswith(pre)}
        assert own and all(n.startswith(pre) for n in own)
        mlp_names = {pre + n for n, _ in blocks(model)[layer].named_parameters() if n.startswith("mlp.")}
        assert {pre + "mlp." + n for n, _ in mlp(model, layer).named_parameters()} == mlp_names
    # the MLP's output has the model's width, one vector per token
    seen = []
    h = mlp(model, 1).register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(torch.tensor([[1, 2, 3, 4, 5]]))
    h.remove()
    assert seen == [torch.Size([1, 5, 32])]
    with pytest.raises(IndexError, match="out of range"):
        mlp(model, 3)


def test_adapter_refuses_other_architectures():
    opt = OPTForCausalLM(OPTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32, vocab_size=50, word_embed_proj_dim=16))
    with pytest.raises(NotImplementedError, match="gpt_neox"):
        blocks(opt)


def test_unreachable_hub_id_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="unreachable"):
        load_causal_lm("EleutherAI/pythia-70m")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_causal_lm("./no/such/model")


def test_tiny_neox_builtin_is_deterministic_gpt_neox():
    model, tok = load_causal_lm("tiny-neox")
    assert model.config.model_type == "gpt_neox" and len(blocks(model)) == 4
    ids = tok("a great movie", return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == "a great movie"
    again, _ = load_causal_lm("tiny-neox")
    assert torch.equal(model(ids).logits, again(ids).logits)


@pytest.mark.slow
def test_smollm2_conversion_is_a_trainable_pretrained_llama(tmp_path):
    model, tok = load_causal_lm("smollm2-135m")
    assert model.config.model_type == "llama" and len(blocks(model)) == 30 and model.config.hidden_size == 576
    assert getattr(model.config, "quantization_config", None) is None
    assert abs(sum(p.numel() for p in model.parameters()) / 1e6 - 134.5) < 0.1
    # a pretrained LM knows this; a random or mis-converted one does not
    ids = tok("The capital of France is", return_tensors="pt")
    nxt = model(**ids).logits[0, -1].argmax().item()
    assert tok.decode([nxt]).strip() == "Paris"
    loss = model(**ids, labels=ids.input_ids).loss
    loss.backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad is not None
    model.save_pretrained(tmp_path)   # the quantised GGUF model refuses this; the converted one does not
    assert (tmp_path / "model.safetensors").exists()
