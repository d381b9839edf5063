"Feature examples: 0-10 scaling, top-k selection, held-out and random examples, records, batched encoding."
import numpy as np
import pytest
import torch

from rewardsae.examples import (encode_features, feature_examples, feature_examples_many, format_records,
                                scale_activations, token_texts)


def test_scaling_known_values():
    # 10 * a / max, rounded half up, clipped to 0..10
    assert scale_activations([0, 0.05, 0.15, 0.25, 0.5, 0.74, 1.0], 1.0).tolist() == [0, 1, 2, 3, 5, 7, 10]
    assert scale_activations([-3.0, 6.0, 12.0], 6.0).tolist() == [0, 10, 10]
    assert scale_activations([1.0, 2.0], 0.0).tolist() == [0, 0]


def toy():
    # 6 reviews of 3 tokens; review r has peak activation peaks[r] at position 1
    peaks = [0.0, 3.0, 8.0, 1.0, 5.0, 0.0]
    doc = np.repeat(np.arange(6), 3)
    pos = np.tile(np.arange(3), 6)
    tid = np.tile([0, 1, 2], 6)
    acts = np.zeros(18)
    acts[1::3] = peaks
    acts[2::3] = np.array(peaks) / 2
    return acts, doc, pos, tid, ["a", " b", " c"]


def test_top_k_selection_and_heldout():
    acts, doc, pos, tid, vocab = toy()
    fx = feature_examples(acts, doc, pos, tid, vocab, feature=11, k=2, n_heldout=2, n_random=2, seed=0)
    assert fx.feature == 11 and fx.max_act == 8.0
    assert [e.doc for e in fx.top] == [2, 4]                # 8.0, 5.0
    assert [e.doc for e in fx.heldout_top] == [1, 3]        # 3.0, 1.0
    assert set(e.doc for e in fx.random) <= {0, 5} and len(fx.random) == 2
    top = fx.top[1]
    assert top.tokens == ["a", " b", " c"] and top.scaled.tolist() == [0, 6, 3]   # 5/8 -> 6.25 -> 6; 2.5/8 -> 3.1 -> 3
    assert np.allclose(top.acts, [0, 5, 2.5])
    assert format_records(fx.top) == "a\t0\n b\t10\n c\t5\n\na\t0\n b\t6\n c\t3"
    assert [e.doc for e in fx.heldout] == [1, 3] + [e.doc for e in fx.random]


def test_only_firing_reviews_are_top_and_first_n_tokens():
    acts, doc, pos, tid, vocab = toy()
    fx = feature_examples(acts, doc, pos, tid, vocab, k=5, n_heldout=5, n_random=1)
    assert [e.doc for e in fx.top] == [2, 4, 1, 3] and fx.heldout_top == []
    # with n_tokens=1 only position 0 counts: nothing fires
    fx = feature_examples(acts, doc, pos, tid, vocab, k=5, n_tokens=1)
    assert fx.top == [] and fx.max_act == 0.0


def test_rows_in_any_order_give_same_examples():
    acts, doc, pos, tid, vocab = toy()
    perm = np.random.default_rng(1).permutation(len(acts))
    a = feature_examples(acts, doc, pos, tid, vocab, k=3, n_random=0)
    b = feature_examples(acts[perm], doc[perm], pos[perm], tid[perm], vocab, k=3, n_random=0)
    assert [(e.doc, e.tokens, e.scaled.tolist()) for e in a.top] == [(e.doc, e.tokens, e.scaled.tolist()) for e in b.top]


def test_many_features_keyed_and_seeded():
    acts, doc, pos, tid, vocab = toy()
    F = np.stack([acts, acts[::-1].copy()], axis=1)
    out = feature_examples_many(F, doc, pos, tid, vocab, features=[40, 7], k=1, progress=False, seed=3)
    assert sorted(out) == [7, 40] and out[40].top[0].doc == 2
    assert out[7].top[0].doc == 3          # reversed rows: review 2's peak now sits in review 3
    again = feature_examples_many(F, doc, pos, tid, vocab, features=[40, 7], k=1, progress=False, seed=3)
    assert [e.doc for e in again[7].random] == [e.doc for e in out[7].random]


def test_bad_input():
    acts, doc, pos, tid, vocab = toy()
    with pytest.raises(ValueError, match="doc has"):
        feature_examples(acts, doc[:-1], pos, tid, vocab)
    with pytest.raises(ValueError, match="1-D"):
        feature_examples(np.stack([acts, acts], 1), doc, pos, tid, vocab)


def test_token_texts_with_decode():
    class Tok:
        def decode(self, ids):
            return {5: " hi", 6: "\n"}[ids[0]]
    assert token_texts(Tok(), [5, 6, 5]) == [" hi", "\n", " hi"]


def test_encode_features_batches_and_columns():
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    enc = lambda x: torch.relu(x @ W.T)
    x = np.array([[1.0, -2.0], [3.0, 4.0], [-1.0, 0.5]], dtype=np.float32)
    F = encode_features(enc, x, features=[2, 0], batch_size=2, progress=False)
    assert F.tolist() == [[0.0, 1.0], [7.0, 3.0], [0.0, 0.0]]


def test_encode_features_computes_only_the_asked_columns_of_a_dictionary():
    from rewardsae.batchtopk import BatchTopKSAE
    from rewardsae.sae import SparseAutoencoder
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g).numpy()
    btk = BatchTopKSAE(16, 40, k=4, seed=1)
    with torch.no_grad():
        btk.b_enc.normal_(generator=g)
        btk.b_dec.normal_(generator=g)
        btk.threshold.fill_(0.3)
    l1 = SparseAutoencoder(16, 40, seed=2)
    from rewardsae.crosscoder import BatchTopKCrosscoder
    cc = BatchTopKCrosscoder(8, 40, k=4, seed=3, scale=(0.5, 2.0))
    with torch.no_grad():
        cc.b_enc.normal_(generator=g)
        cc.W_dec.mul_(torch.rand(40, 1, generator=g) + 0.5)
        cc.threshold.fill_(0.4)
    cols = [39, 3, 17, 3]
    for sae in (btk, l1, cc):
        calls = []
        sae.encode_columns = (lambda f: lambda b, c: calls.append(len(c)) or f(b, c))(sae.encode_columns)
        F = encode_features(sae.encode, x, features=cols, batch_size=128, progress=False)
        with torch.no_grad():
            full = sae.encode(torch.as_tensor(x))[:, cols].numpy()
        assert calls == [4, 4, 4] and (full > 0).any() and (full == 0).any()
        assert np.allclose(F, full, atol=1e-6)
