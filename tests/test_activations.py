"Activation harvesting (SPEC §1.3): values equal a manual hooked forward, pads excluded, hooks removed, early stop."
import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

from rewardsae.activations import ActivationStore, harvest_activations
from rewardsae.models import blocks, builtin_path, mlp

TEXTS = [
    "A wonderful little film, with a cast that clearly enjoyed every minute of it.",
    "Bad.",
    "",  # no tokens: contributes no rows
    "I have seen this movie three times and I still cannot decide whether the ending works or not, "
    "which is probably the point; the director never tells you what to think, and neither will I.",
    "Not my cup of tea, but the score is lovely.",
]
MAX_LEN = 24


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(builtin_path("tiny-neox"))


def make(kind, vocab, n_layers=4):
    torch.manual_seed(0)
    if kind == "gpt_neox":
        cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
                            intermediate_size=64, rotary_pct=0.25)
        m = GPTNeoXForCausalLM(cfg)
    else:
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=64)
        m = LlamaForCausalLM(cfg)
    return m.eval()


def manual(model, tok, text, layer, site="mlp"):
    "One document alone (no padding), full forward pass, our own hook: the reference values."
    seen = {}
    point = mlp(model, layer) if site == "mlp" else blocks(model)[layer]
    h = point.register_forward_hook(lambda m, i, o: seen.setdefault("x", o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            model(**tok(text, truncation=True, max_length=MAX_LEN, return_tensors="pt"))
    finally:
        h.remove()
    return seen["x"][0].numpy()


def hooks(model):
    "Every forward hook on the blocks and their MLPs (transformers adds its own for output_hidden_states)."
    return [(i, list(b._forward_hooks), list(b.mlp._forward_hooks)) for i, b in enumerate(blocks(model))]


def no_hooks(model):
    return all(not b._forward_hooks and not b.mlp._forward_hooks for b in blocks(model))


@pytest.mark.parametrize("kind", ["gpt_neox", "llama"])
def test_mlp_activations_equal_manual_forward_and_exclude_pads(kind, tok, tmp_path):
    model = make(kind, len(tok))
    store = harvest_activations(model, tok, TEXTS, layers=[2, 0], out_dir=tmp_path / "s", max_length=MAX_LEN,
                                batch_size=2, progress=False)
    ids = tok(TEXTS, truncation=True, max_length=MAX_LEN)["input_ids"]
    lengths = [len(x) for x in ids]
    assert lengths[2] == 0 and lengths[3] == MAX_LEN           # the empty text, and one text that was truncated
    assert store.layers == [0, 2] and store.d_model == 32
    assert store.n_tokens == sum(lengths)                       # pad positions are not stored
    assert store.doc.tolist() == [d for d, n in enumerate(lengths) for _ in range(n)]
    assert store.pos.tolist() == [p for n in lengths for p in range(n)]
    assert store.token_id.tolist() == [t for x in ids for t in x]
    for layer in (0, 2):
        acts = store.activations(layer)
        assert isinstance(acts, np.memmap) and acts.dtype == np.float32 and acts.shape == (store.n_tokens, 32)
        for d, text in enumerate(TEXTS):
            if lengths[d]:
                # batched with padding + stopped early == alone + full pass
                np.testing.assert_allclose(acts[store.doc_slice(d)], manual(model, tok, text, layer), atol=1e-5)
    assert no_hooks(model)


def test_batching_does_not_change_a_document(tok, tmp_path):
    model = make("gpt_neox", len(tok))
    short = ["Bad.", TEXTS[3]]   # "Bad." is padded to the long one's length when batched together
    together = harvest_activations(model, tok, short, [1], tmp_path / "a", max_length=MAX_LEN, batch_size=2,
                                   progress=False)
    alone = harvest_activations(model, tok, short[:1], [1], tmp_path / "b", max_length=MAX_LEN, batch_size=1,
                                progress=False)
    assert alone.n_tokens == together.doc_slice(0).stop == len(tok("Bad.")["input_ids"])
    np.testing.assert_allclose(together.activations(1)[together.doc_slice(0)], alone.activations(1)[:], atol=1e-6)


@pytest.mark.parametrize("kind", ["gpt_neox", "llama"])
def test_resid_is_the_block_output(kind, tok, tmp_path):
    model = make(kind, len(tok))
    store = harvest_activations(model, tok, TEXTS, layers=[1, 3], out_dir=tmp_path / "r", max_length=MAX_LEN,
                                site="resid", batch_size=3, progress=False)
    assert store.site == "resid" and no_hooks(model)
    for d in (0, 3):
        with torch.no_grad():
            hs = model(**tok(TEXTS[d], truncation=True, max_length=MAX_LEN, return_tensors="pt"),
                       output_hidden_states=True).hidden_states
        np.testing.assert_allclose(store.activations(1)[store.doc_slice(d)], hs[2][0].numpy(), atol=1e-5)
        # the last block: hidden_states[-1] has the final norm applied, so compare with a hook instead
        np.testing.assert_allclose(store.activations(3)[store.doc_slice(d)],
                                   manual(model, tok, TEXTS[d], 3, site="resid"), atol=1e-5)
    before = hooks(model)   # now including transformers' own output-capturing hooks
    harvest_activations(model, tok, TEXTS, layers=[1, 3], out_dir=tmp_path / "r2", max_length=MAX_LEN,
                        site="resid", progress=False)
    assert hooks(model) == before


def test_forward_stops_after_deepest_layer(tok, tmp_path):
    model = make("llama", len(tok))
    calls = {"block2": 0, "block3": 0, "head": 0, "mlp1": 0}
    hs = [blocks(model)[2].register_forward_hook(lambda *a: calls.__setitem__("block2", calls["block2"] + 1)),
          blocks(model)[3].register_forward_hook(lambda *a: calls.__setitem__("block3", calls["block3"] + 1)),
          model.get_output_embeddings().register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1)),
          mlp(model, 1).register_forward_hook(lambda *a: calls.__setitem__("mlp1", calls["mlp1"] + 1))]
    harvest_activations(model, tok, TEXTS, [0, 1], tmp_path / "s", max_length=MAX_LEN, batch_size=2, progress=False)
    for h in hs:
        h.remove()
    assert calls == {"block2": 0, "block3": 0, "head": 0, "mlp1": 2}   # 4 non-empty docs in batches of 2
    assert no_hooks(model)


def test_hooks_removed_and_nothing_written_on_error(tok, tmp_path):
    model = make("gpt_neox", len(tok)).train()

    def boom(*a):
        raise RuntimeError("boom")
    h = blocks(model)[1].attention.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        harvest_activations(model, tok, TEXTS, [0, 2], tmp_path / "s", max_length=MAX_LEN, progress=False)
    h.remove()
    assert no_hooks(model)
    assert model.training                         # train/eval mode restored
    assert list(tmp_path.iterdir()) == []         # no store, no temporary folder left behind


def test_reuse_refuse_and_redo(tok, tmp_path):
    model = make("gpt_neox", len(tok))
    out = tmp_path / "s"
    first = harvest_activations(model, tok, TEXTS, [1], out, max_length=MAX_LEN, progress=False)
    calls = []
    h = blocks(model)[0].register_forward_hook(lambda *a: calls.append(1))
    again = harvest_activations(model, tok, TEXTS, [1], out, max_length=MAX_LEN, batch_size=4, progress=False)
    h.remove()
    assert calls == [] and again.meta == first.meta                   # same run: reused, not recomputed
    with pytest.raises(ValueError, match="max_length"):
        harvest_activations(model, tok, TEXTS, [1], out, max_length=8, progress=False)
    with pytest.raises(ValueError, match="texts_sha256"):
        harvest_activations(model, tok, TEXTS[:2], [1], out, max_length=MAX_LEN, progress=False)
    with torch.no_grad():
        mlp(model, 3).dense_4h_to_h.bias += 0.01                       # same name, edited weights
    with pytest.raises(ValueError, match="weights_checksum"):
        harvest_activations(model, tok, TEXTS, [1], out, max_length=MAX_LEN, progress=False)
    # an incomplete store (no meta.json) is redone
    (out / "meta.json").unlink()
    redone = harvest_activations(model, tok, TEXTS, [1], out, max_length=MAX_LEN, progress=False)
    assert json.loads((out / "meta.json").read_text())["n_tokens"] == redone.n_tokens == first.n_tokens
    # a folder with someone else's files is never overwritten
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        harvest_activations(model, tok, TEXTS, [1], other, max_length=MAX_LEN, progress=False)


def test_bad_input_is_refused_before_work(tok, tmp_path):
    model = make("gpt_neox", len(tok))
    out = tmp_path / "s"
    with pytest.raises(ValueError, match="texts is empty"):
        harvest_activations(model, tok, [], [0], out)
    with pytest.raises(TypeError, match="list of strings"):
        harvest_activations(model, tok, "one review", [0], out)
    with pytest.raises(IndexError, match="layer 4 out of range"):
        harvest_activations(model, tok, TEXTS, [0, 4], out)
    with pytest.raises(ValueError, match="layers is empty"):
        harvest_activations(model, tok, TEXTS, [], out)
    with pytest.raises(ValueError, match="unknown site 'attn'"):
        harvest_activations(model, tok, TEXTS, [0], out, site="attn")
    with pytest.raises(ValueError, match="max_length"):
        harvest_activations(model, tok, TEXTS, [0], out, max_length=0)
    with pytest.raises(ValueError, match="no tokens"):
        harvest_activations(model, tok, ["", ""], [0], out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="not a complete activation store"):
        ActivationStore(tmp_path)
    store = harvest_activations(model, tok, TEXTS, [0], out, max_length=MAX_LEN, progress=False)
    with pytest.raises(KeyError, match=r"layer 2 is not in this store"):
        store.activations(2)


@pytest.mark.parametrize("kind", ["gpt_neox", "llama"])
def test_bf16_harvest_is_close_to_the_fp32_reference_and_recorded(kind, tok, tmp_path):
    "Autocast bf16: the same rows within bf16 rounding of the fp32 reference, and a store of its own."
    model = make(kind, len(tok))
    ref = harvest_activations(model, tok, TEXTS, [1, 2], tmp_path / "fp32", max_length=MAX_LEN, progress=False)
    low = harvest_activations(model, tok, TEXTS, [1, 2], tmp_path / "bf16", max_length=MAX_LEN, progress=False,
                              compute_dtype="bfloat16")
    assert low.n_tokens == ref.n_tokens and np.array_equal(low.token_id, ref.token_id)
    for layer in (1, 2):
        a, b = np.asarray(ref.activations(layer)), np.asarray(low.activations(layer))
        rel = np.linalg.norm(b - a) / np.linalg.norm(a)
        assert 0 < rel < 0.03, (layer, rel)                 # really bf16 (not bit-equal), and close
    assert json.loads((tmp_path / "bf16" / "meta.json").read_text())["compute_dtype"] == "bfloat16"
    assert "compute_dtype" not in json.loads((tmp_path / "fp32" / "meta.json").read_text())
    with pytest.raises(ValueError, match="unknown compute dtype"):
        harvest_activations(model, tok, TEXTS, [1], tmp_path / "x", compute_dtype="fp8", progress=False)
