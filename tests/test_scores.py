"Scores: simulation score, Table 3 formula (hand-computed from VADER), token utilities, utility correlation, Appendix E."
import math

import numpy as np
import pandas as pd
import pytest

from rewardsae.examples import Example, FeatureExamples, scale_activations
from rewardsae.explain import TokenExplainer
from rewardsae.scores import (META_WORDS, appendix_e, description_utility, score_explanations, simulation_score, table3,
                              token_word_utilities, utility_correlation, utility_correlation_table, write_appendix_e)


def test_simulation_score_perfect_anti_and_constant():
    true = np.array([0.0, 1.5, 9.0, 0.0, 4.0])
    assert simulation_score(true, 2 * true + 1) == pytest.approx(1.0)
    assert simulation_score(true, 10 - true) == pytest.approx(-1.0)
    # a constant simulation of varying activations predicts nothing: 0, not NaN (NaN dropped out of means)
    assert simulation_score(true, np.zeros(5)) == 0.0
    assert math.isnan(simulation_score(np.zeros(5), true))   # the feature is silent: unscorable
    # hand-computed: x = [0, 1, 2], y = [0, 2, 1] -> r = 0.5
    assert simulation_score([0, 1, 2], [0, 2, 1]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        simulation_score([1, 2], [1, 2, 3])


def test_score_explanations_with_lexical_simulator():
    # the feature fires exactly on " great": a description naming "great" simulates it perfectly
    def ex(doc, toks):
        a = np.array([8.0 if t.strip() == "great" else 0.0 for t in toks])
        return Example(doc, toks, a, scale_activations(a, 8.0))
    fx = FeatureExamples(0, 8.0, top=[ex(0, ["a", " great", " film"])],
                         heldout_top=[ex(1, ["so", " great"])], random=[ex(2, ["the", " plot", " great"])])
    good = 'Fires on "great" (mean 10.0, 100% of activation).'
    wrong = 'Fires on "plot" (mean 10.0, 100% of activation).'
    df = score_explanations(TokenExplainer(), {0: good, 1: wrong}, {0: fx, 1: fx}, progress=False)
    assert df.score.tolist()[0] == pytest.approx(1.0)
    # wrong: predicts only " plot" (a 0-token): x = [0,8,0,0,8], y = [0,0,0,10,0] -> r = -0.4082
    assert df.score.tolist()[1] == pytest.approx(-1 / math.sqrt(6))
    assert df.n_tokens.tolist() == [5, 5] and df.n_malformed.tolist() == [0, 0]


def test_description_utility_by_hand():
    # VADER: great 3.1, terrible -2.1, good 1.9, bad -2.5; "movie", "plot", "feature" are not in the lexicon
    assert description_utility("Great movie, TERRIBLE plot.") == pytest.approx(abs(3.1 - 2.1) / 2)
    assert description_utility("Great movie, TERRIBLE plot.", variant="sum") == pytest.approx(1.0)
    assert description_utility("bad, bad (bad) plot") == pytest.approx(2.5)
    assert description_utility("bad, bad (bad) plot", variant="sum") == pytest.approx(7.5)
    assert description_utility("the feature fires on plot words") == 0.0
    with pytest.raises(ValueError):
        description_utility("x", variant="median")


def test_table3_formula_top_k_and_interval():
    rows = []
    # two layers, k = 1 by similarity: only the first description of each (model, seed, layer) counts
    for seed, (d1, d2) in enumerate([("great", "good"), ("terrible", "bad"), ("great bad", "plot")]):
        rows += [dict(model="rlhf", seed=seed, layer=0, similarity=0.9, description=d1),
                 dict(model="rlhf", seed=seed, layer=0, similarity=0.1, description="love love love"),
                 dict(model="rlhf", seed=seed, layer=3, similarity=0.8, description=d2)]
    rows += [dict(model="base", seed=0, layer=0, similarity=0.5, description="a movie")]
    t = table3(pd.DataFrame(rows), k=1)
    t = t[t.stoplist == "none"].set_index(["model", "variant"])   # none of these words is a meta word
    # mean variant per seed: |3.1| + |1.9| = 5.0; |-2.1| + |-2.5| = 4.6; |(3.1-2.5)/2| + 0 = 0.3
    per_seed = [5.0, 4.6, 0.3]
    r = t.loc[("rlhf", "mean")]
    assert r.per_seed == pytest.approx(per_seed) and r.utility == pytest.approx(np.mean(per_seed))
    half = 4.302652729911275 * np.std(per_seed, ddof=1) / math.sqrt(3)
    assert (r.ci_low, r.ci_high) == (pytest.approx(np.mean(per_seed) - half), pytest.approx(np.mean(per_seed) + half))
    # sum variant: 5.0, 4.6, |3.1 - 2.5| = 0.6
    assert t.loc[("rlhf", "sum")].per_seed == pytest.approx([5.0, 4.6, 0.6])
    b = t.loc[("base", "mean")]
    assert b.utility == 0.0 and b.n_seeds == 1 and math.isnan(b.ci_low)
    with pytest.raises(ValueError, match="needs columns"):
        table3(pd.DataFrame({"model": ["x"]}))


def test_table3_scores_no_placeholder_and_counts_undescribed():
    # the old placeholder for dead features contained "fire" (VADER -1.4) and added 1.4 per dead feature
    rows = [dict(model="base", seed=0, layer=0, similarity=0.9, description="Does not fire on the sampled reviews.",
                 status="ok"),
            dict(model="base", seed=0, layer=0, similarity=0.8, description="", status="dead"),
            dict(model="base", seed=0, layer=0, similarity=0.7, description="love", status="too_sparse"),
            dict(model="base", seed=0, layer=0, similarity=0.6, description="great", status="ok")]
    t = table3(pd.DataFrame(rows), k=3).set_index(["model", "variant", "stoplist"])
    # k = 3 keeps the first three; only the first is described and scored: |fire| = 1.4 with the paper's rule,
    # 0 once "fire" is a stopped meta word; the dead and too-sparse rows score 0 whatever their text
    assert t.loc[("base", "sum", "none")].utility == pytest.approx(1.4)
    assert t.loc[("base", "sum", "meta")].utility == 0.0
    assert t.loc[("base", "mean", "none")].n_undescribed == 2 and t.loc[("base", "mean", "none")].n_features == 3


def test_description_utility_stoplist():
    assert description_utility("strongly activates on words like great", variant="sum") == pytest.approx(1.1 + 1.5 + 3.1)
    assert description_utility("strongly activates on words like great", variant="sum",
                               stoplist=META_WORDS) == pytest.approx(3.1)
    assert "fire" in META_WORDS and "great" not in META_WORDS and "positive" not in META_WORDS


def test_token_word_utilities_subwords():
    vocab = ["I", " ter", "rible", " great", "-looking", " movie", "!", " well", "-made"]
    table = {"terrible": -2.1, "great": 3.1, "well": 1.1, "made": 0.5}
    ids = [0, 1, 2, 5, 6, 3, 4, 7, 8]
    doc = [0, 0, 0, 0, 0, 1, 1, 1, 1]
    u = token_word_utilities(ids, doc, vocab, table)
    # " ter" + "rible" -> terrible; "great-looking" not in table -> parts: great, looking(0);
    # "well-made" -> well 1.1, made 0.5 ("-made" overlaps "made" only)
    assert u.tolist() == [0, -2.1, -2.1, 0, 0, 3.1, 0, 1.1, 0.5]
    # positions reorder rows within a review
    u2 = token_word_utilities([2, 1], [0, 0], vocab, table, pos=[1, 0])
    assert u2.tolist() == [-2.1, -2.1]


def test_utility_correlation_constructed():
    u = np.array([3.1, 0.0, -2.1, 0.0, 3.1, 0.0])
    F = np.stack([np.maximum(u, 0),        # fires on positive words
                  np.maximum(-u, 0),       # fires on negative words
                  np.array([1.0, 0, 0, 0, 0, 1.0]),
                  np.zeros(6)], axis=1)
    r = utility_correlation(F, u)
    assert r[0] > 0.9 and r[1] < -0.4 and math.isnan(r[3])
    assert r[0] == pytest.approx(np.corrcoef(F[:, 0], u)[0, 1])
    # hand-computed: x = [1,0,0,0,0,1] vs u: cov / (sd sd)
    assert r[2] == pytest.approx(np.corrcoef(F[:, 2], u)[0, 1])
    t = utility_correlation_table({"base": [0.1, -0.1, np.nan], "rlhf": [0.5, -0.3]}).set_index("model")
    assert t.loc["base"].mean_abs_r == pytest.approx(0.1) and t.loc["base"].n_nan == 1
    assert t.loc["rlhf"].mean_abs_r == pytest.approx(0.4) and t.loc["rlhf"].mean_r == pytest.approx(0.1)


def test_appendix_e_formats(tmp_path):
    df = pd.DataFrame({"layer": [3, 1, 3], "dictionary": ["large"] * 3, "feature": [12, 7, 99],
                       "similarity": [0.71, 0.9, 0.95], "description": ["Fires on a | b", "x_y & z", "ok"],
                       "score": [0.5, float("nan"), 0.25]})
    t = appendix_e(df)
    md = t["markdown"].splitlines()
    assert md[0] == "| layer | dictionary | feature | similarity | description | score |"
    assert md[2] == "| 1 | large | 7 | 0.900 | x_y & z |  |"
    assert md[3] == "| 3 | large | 99 | 0.950 | ok | 0.250 |" and "a \\| b" in md[4]
    assert "x\\_y \\& z" in t["latex"] and "\\begin{tabular}" in t["latex"]
    assert pd.read_csv(__import__("io").StringIO(t["csv"])).feature.tolist() == [7, 99, 12]
    paths = write_appendix_e(df, tmp_path / "out" / "appendix_e")
    assert [p.name for p in paths] == ["appendix_e.md", "appendix_e.tex", "appendix_e.csv"]
    assert paths[0].read_text().rstrip("\n") == t["markdown"]
    with pytest.raises(ValueError, match="missing"):
        appendix_e(df.drop(columns="score"))
