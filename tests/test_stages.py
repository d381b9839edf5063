"Stage cache: reuse on the same key, recompute downstream on a change, nothing half-written kept."
import pytest

from rewardsae.stages import cached_stage, fingerprint, load_stage


def counter():
    calls = []
    def compute(value):
        def f(folder):
            calls.append(value)
            (folder / "out.txt").write_text(str(value))
            return {"value": value}
        return f
    return calls, compute


def test_same_key_reuses_and_changed_key_recomputes(tmp_path):
    calls, compute = counter()
    a = cached_stage(tmp_path, "a", {"x": 1}, compute(1), log=None)
    again = cached_stage(tmp_path, "a", {"x": 1}, compute(99), log=None)
    assert calls == [1] and again.reused and again.result == {"value": 1}
    assert (again.folder / "out.txt").read_text() == "1"
    changed = cached_stage(tmp_path, "a", {"x": 2}, compute(2), log=None)
    assert calls == [1, 2] and changed.result == {"value": 2} and not changed.reused


def test_downstream_follows_upstream_fingerprint(tmp_path):
    calls, compute = counter()
    a = cached_stage(tmp_path, "a", {"x": 1}, compute("a1"), log=None)
    b = cached_stage(tmp_path, "b", {}, compute("b1"), deps=(a,), log=None)
    b_again = cached_stage(tmp_path, "b", {}, compute("never"), deps=(a,), log=None)
    assert b_again.reused
    a2 = cached_stage(tmp_path, "a", {"x": 2}, compute("a2"), log=None)
    b2 = cached_stage(tmp_path, "b", {}, compute("b2"), deps=(a2,), log=None)
    assert calls == ["a1", "b1", "a2", "b2"] and b2.result == {"value": "b2"}
    assert b2.key["deps"] == [fingerprint(a2.key)] != b.key["deps"]


def test_reordered_inputs_recompute(tmp_path):
    # the same inputs in another order (e.g. SAE seeds [1, 0] instead of [0, 1], whose first pair feeds MMCS)
    calls, compute = counter()
    a = cached_stage(tmp_path, "a", {"seed": 0}, compute("a"), log=None)
    b = cached_stage(tmp_path, "b", {"seed": 1}, compute("b"), log=None)
    cached_stage(tmp_path, "c", {}, compute("ab"), deps=(a, b), log=None)
    again = cached_stage(tmp_path, "c", {}, compute("never"), deps=(a, b), log=None)
    swapped = cached_stage(tmp_path, "c", {}, compute("ba"), deps=(b, a), log=None)
    assert again.reused and not swapped.reused and calls == ["a", "b", "ab", "ba"]


def test_interrupted_stage_leaves_previous_result(tmp_path):
    _, compute = counter()
    cached_stage(tmp_path, "a", {"x": 1}, compute(1), log=None)
    def dies(folder):
        (folder / "out.txt").write_text("partial")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        cached_stage(tmp_path, "a", {"x": 2}, dies, log=None)
    kept = load_stage(tmp_path / "stages" / "a")
    assert kept.key["params"] == {"x": 1} and (kept.folder / "out.txt").read_text() == "1"
    assert [p.name for p in (tmp_path / "stages").iterdir()] == ["a"]   # no temp folder left


def test_result_must_be_json(tmp_path):
    with pytest.raises(TypeError):
        cached_stage(tmp_path, "a", {}, lambda f: {"bad": object()}, log=None)
    assert load_stage(tmp_path / "stages" / "a") is None
