"Tests of the offline sentiment classifier (rewardsae.sentiment) on toy data with known answers."
import numpy as np
import pytest

from rewardsae.sentiment import SentimentHead, fit_head, first_tokens, sentiment_classifier

POS = ["great film, loved it", "wonderful and moving", "a great cast", "loved the music"]
NEG = ["awful film, hated it", "boring and dull", "an awful script", "hated the music"]


@pytest.fixture(scope="module")
def toy():
    return fit_head(POS + NEG, [1] * 4 + [0] * 4, min_df=1)


def test_toy_head_ranks_obvious_texts(toy):
    s = toy(["a wonderful, great story", "dull and awful", "the music", ""])
    assert s[0] > 0 > s[1]
    assert abs(s[2]) < abs(s[0]) and abs(s[2]) < abs(s[1])
    assert np.isclose(s[3], toy.classifier.intercept_[0])      # no known word: the logit is the bias alone
    assert np.mean(np.array(toy(POS + NEG)) > 0) == 0.5 and all(v > 0 for v in toy(POS))


def test_logit_is_log_odds(toy):
    x = toy.vectorizer.transform(["great and wonderful"])
    p = toy.classifier.predict_proba(x)[0, 1]
    assert np.isclose(toy(["great and wonderful"])[0], np.log(p / (1 - p)))


def test_save_load_roundtrip(toy, tmp_path):
    path = toy.save(tmp_path / "head.pkl")
    again = SentimentHead.load(path)
    assert again(POS + NEG) == toy(POS + NEG) and (tmp_path / "head.json").exists()


def test_bad_input(toy):
    with pytest.raises(ValueError, match="both labels"):
        fit_head(POS, [1, 1, 1, 1])
    with pytest.raises(ValueError, match="as many labels"):
        fit_head(POS, [1, 0])
    with pytest.raises(TypeError):
        toy("a single string")
    with pytest.raises(ValueError, match="unknown sentiment source"):
        sentiment_classifier("vader")


def test_first_tokens():
    from transformers import AutoTokenizer
    from rewardsae.models import builtin_path
    tok = AutoTokenizer.from_pretrained(builtin_path("tiny-neox"))
    text = "An absolutely wonderful film with a great cast and a moving score."
    ids = tok(text, add_special_tokens=False).input_ids
    assert first_tokens([text], 5, tok) == [tok.decode(ids[:5])]
    assert text.startswith(first_tokens([text], 5, tok)[0])


def test_cached_head_does_not_pickle_its_class(tmp_path):
    "A head cached while running the notebook (class in __main__) must load from the package: pickle only sklearn parts."
    from rewardsae.sentiment import SentimentHead, fit_head
    texts = ["great film, loved it", "wonderful and great", "awful, boring film", "terrible and boring"] * 3
    head = fit_head(texts, [1, 1, 0, 0] * 3, min_df=1)
    path = head.save(tmp_path / "head.pkl")
    assert b"SentimentHead" not in path.read_bytes()
    again = SentimentHead.load(path)
    probe = ["a great film", "a boring film"]
    assert again(probe) == head(probe) and again(probe)[0] > 0 > again(probe)[1]
