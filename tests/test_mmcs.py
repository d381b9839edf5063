"MMCS (paper eq. 2 and the one-to-one Hungarian variant), top features with both indices, base vs RLHF."
import numpy as np
import pytest
import torch

from rewardsae.mmcs import chance_mmcs, compare_dictionaries, cosine_matrix, mmcs, top_features


def deg(*angles):
    r = np.radians(angles)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


def test_self_is_one_with_identity_indices():
    D = np.random.default_rng(0).standard_normal((50, 16))
    for method in ("greedy", "hungarian"):
        score, sim, idx = mmcs(D, D, method)
        assert score == pytest.approx(1.0) and np.allclose(sim, 1.0) and (idx == np.arange(50)).all()


def test_hungarian_finds_permutation_and_scale_is_ignored():
    D = np.random.default_rng(1).standard_normal((40, 8))
    perm = np.random.default_rng(2).permutation(40)
    D2 = D[perm] * np.random.default_rng(3).uniform(0.1, 10, (40, 1))
    score, sim, idx = mmcs(D, torch.tensor(D2), "hungarian")
    assert score == pytest.approx(1.0)
    assert (D2[idx] / np.linalg.norm(D2[idx], axis=1, keepdims=True) ==
            pytest.approx(D / np.linalg.norm(D, axis=1, keepdims=True)))
    assert (perm[idx] == np.arange(40)).all()


def test_hand_made_2d_greedy_vs_hungarian():
    # D1 at 0, 90, 40 degrees; D2 at 10 and 80 degrees.
    score, sim, idx = mmcs(deg(0, 90, 40), deg(10, 80), "greedy")
    assert list(idx) == [0, 1, 0]                       # 40 is 30 from 10 and 40 from 80
    assert sim == pytest.approx(np.cos(np.radians([10, 10, 30])))
    assert score == pytest.approx(np.cos(np.radians([10, 10, 30])).mean())
    score_h, sim_h, idx_h = mmcs(deg(0, 90, 40), deg(10, 80), "hungarian")
    assert list(idx_h) == [0, 1, -1] and np.isnan(sim_h[2]) and score_h == pytest.approx(np.cos(np.radians(10)))
    # greedy many-to-one vs Hungarian one-to-one: 0 and 20 both prefer 10, but one must take 90
    _, sim_g, idx_g = mmcs(deg(0, 20), deg(10, 90), "greedy")
    _, sim_o, idx_o = mmcs(deg(0, 20), deg(10, 90), "hungarian")
    assert list(idx_g) == [0, 0] and sorted(idx_o) == [0, 1]
    assert sim_o.sum() == pytest.approx(np.cos(np.radians(10)) + np.cos(np.radians(70)))
    assert cosine_matrix(deg(0), deg(60))[0, 0] == pytest.approx(0.5)


def test_top_features_keeps_both_indices():
    rng = np.random.default_rng(0)
    large = rng.standard_normal((12, 20))
    # small feature j is a noisy copy of large feature 11 - j (indices deliberately different), noise grows with j
    small = np.stack([large[11 - j] + 0.05 * (j + 1) * rng.standard_normal(20) for j in range(6)])
    for method in ("greedy", "hungarian"):
        top = top_features(large, small, k=4, method=method)
        assert list(top.columns) == ["rank", "large_idx", "small_idx", "similarity"]
        assert list(top.small_idx) == [0, 1, 2, 3] and list(top.large_idx) == [11, 10, 9, 8]
        cos = cosine_matrix(large, small)
        assert np.allclose(top.similarity, cos[top.large_idx, top.small_idx])
        assert top.similarity.is_monotonic_decreasing


def test_top_features_greedy_keeps_each_large_feature_once():
    large = deg(0, 90)
    small = deg(5, 10, 85)              # 5 and 10 both pick large 0
    top = top_features(large, small, k=3, method="greedy")
    assert list(top.large_idx) == [0, 1] and list(top.small_idx) == [0, 2]


def test_compare_dictionaries_finds_added_directions():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30, 64))
    new = rng.standard_normal((3, 64))
    rlhf = np.concatenate([base[:10] + 0.01 * rng.standard_normal((10, 64)), new, base[10:]])   # rows 10..12 are new
    summary, novel = compare_dictionaries({5: base, 7: base}, {5: rlhf, 7: base}, k=3)
    assert list(summary.layer) == [5, 7] and summary.mmcs[1] == pytest.approx(1.0)
    assert summary.mmcs[0] == pytest.approx((30 * 0.9999 + mmcs(new, base)[1].sum()) / 33, abs=2e-3)
    assert sorted(novel[novel.layer == 5].rlhf_idx) == [10, 11, 12]
    assert (novel[novel.layer == 5].similarity < 0.5).all()
    assert 0.2 < summary.chance[0] < 0.6           # random 64-d: best of 30 is ~0.3
    with pytest.raises(ValueError, match="only one"):
        compare_dictionaries({1: base}, {2: base})


def test_chance_level_in_576_dims():
    assert 0.12 < chance_mmcs(576, 1152, 576) < 0.22


@pytest.mark.parametrize("D1, D2, msg", [
    (np.zeros((0, 3)), np.ones((2, 3)), "non-empty"),
    (np.ones((2, 3)), np.ones((2, 4)), "different widths"),
    (np.array([[1.0, 0], [0, 0]]), np.ones((2, 2)), "all-zero"),
    (np.array([[np.nan, 1.0]]), np.ones((2, 2)), "NaN"),
])
def test_bad_input(D1, D2, msg):
    with pytest.raises(ValueError, match=msg):
        mmcs(D1, D2)
    with pytest.raises(ValueError, match="method"):
        mmcs(np.ones((1, 2)), np.ones((1, 2)), "best")
