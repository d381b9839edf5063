"Tests of the RL stage (rewardsae.rlhf) and the sentiment reward's building blocks (rewardsae.sentiment)."
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from rewardsae.models import load_causal_lm
from rewardsae.rlhf import (PRESETS, RLConfig, bootstrap_ci, paired_bootstrap_ci, check_rewards, evaluate_completions, grpo_reward,
                            make_prompts, preset, table4_markdown, train_policy)
from rewardsae.rewards import utility_reward


def e_count(texts):
    "A toy reward with a spread even on a random model's gibberish: the number of letters 'e'."
    return [float(t.count("e")) for t in texts]


@pytest.fixture(scope="module")
def tiny_tok():
    return load_causal_lm("tiny-neox", device="cpu")[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl") / "smoke"
    return out, train_policy(preset("smoke"), out, reward_fn=e_count)


def test_presets_map_table1():
    p = PRESETS["paper"]
    assert (p.batch, p.mini_batch, p.epochs, p.lr, p.beta, p.max_grad_norm) == (64, 16, 4, 1e-6, 0.5, 1.0)
    assert p.updates_per_step == 16 and p.steps == 390
    assert (p.min_prompt_tokens, p.max_prompt_tokens, p.min_new_tokens, p.max_new_tokens) == (2, 10, 8, 20)
    assert PRESETS["cpu"].model == "smollm2-135m" and PRESETS["smoke"].model == "tiny-neox"


@pytest.mark.parametrize("bad", [dict(reward="length"), dict(mini_batch=5), dict(generations=1), dict(steps=0),
                                 dict(min_new_tokens=30), dict(trainer="ppo")])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        preset("smoke", **bad)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpu")
    with pytest.raises(ValueError, match="unknown RLConfig field"):
        preset("cpu", learning_rate=1e-3)


def test_prompts_are_2_to_10_token_openings_of_long_reviews(tiny_tok):
    long_review = "An absolutely wonderful film with a great cast. " * 6   # > 200 characters
    texts = ["too short to be used"] * 50 + [long_review + str(i) for i in range(30)]
    ds = make_prompts(tiny_tok, 20, seed=1, texts=texts)
    assert len(ds) == 20
    for p, k in zip(ds["prompt"], ds["n_tokens"]):
        assert 2 <= k <= 10
        assert long_review.startswith(p)                   # an opening of a long review, never the short one
        assert p == tiny_tok.decode(tiny_tok(long_review, add_special_tokens=False).input_ids[:k])
    assert len(set(ds["n_tokens"])) > 3                    # lengths are drawn, not fixed
    assert make_prompts(tiny_tok, 20, seed=1, texts=texts)["prompt"] == ds["prompt"]


def test_empty_prompt_set(tiny_tok):
    with pytest.raises(ValueError, match="no prompts"):
        make_prompts(tiny_tok, 10, texts=["short review"] * 5)


def test_check_rewards():
    assert check_rewards(np.array([1, 2]), 2) == [1.0, 2.0]
    with pytest.raises(ValueError, match="returned 1 values for 2"):
        check_rewards([1.0], 2)
    with pytest.raises(ValueError, match="non-finite"):
        check_rewards([1.0, float("nan")], 2)


def test_grpo_reward_reads_prompt_plus_completion():
    r = grpo_reward(utility_reward, "utility")(["A great", "So"], [" film, a terrible end", " bad"])
    assert np.allclose(r, [(3.1 - 2.1) / 5, -2.5 / 5])


def test_paired_bootstrap_sees_a_shift_that_unpaired_intervals_hide():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 3, 100)                # wide spread between prefixes
    tuned = base + 0.5 + rng.normal(0, 0.1, 100)  # a small, consistent shift at every prefix
    _, blo, bhi = bootstrap_ci(base)
    _, tlo, thi = bootstrap_ci(tuned)
    assert tlo < bhi                            # the unpaired intervals overlap ...
    d, lo, hi = paired_bootstrap_ci(base, tuned)
    assert d == pytest.approx(np.mean(tuned - base)) and 0.45 < lo < 0.5 < hi < 0.55   # ... the paired one does not
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap_ci([1, 2], [1, 2, 3])


def test_bootstrap_known_answers():
    assert bootstrap_ci([2.0] * 10) == (2.0, 2.0, 2.0)
    v, lo, hi = bootstrap_ci([0, 1] * 50)          # mean 0.5, standard error 0.05
    assert v == 0.5 and 0.38 < lo < 0.42 and 0.58 < hi < 0.62
    s, slo, shi = bootstrap_ci([0, 1] * 50, stat="sum")
    assert s == 50 and np.isclose(slo, 100 * lo) and np.isclose(shi, 100 * hi)


def test_smoke_training_outputs(smoke_run, tmp_path):
    out, policy = smoke_run
    cfg = json.loads((out / "config.json").read_text())
    from rewardsae.precision import compute_dtype
    assert cfg == {**asdict(preset("smoke")), "compute_dtype": compute_dtype()}   # "auto" is stored as what it chose
    log = __import__("pandas").read_csv(out / "log.csv")
    assert list(log["step"]) == [1, 2] and {"reward", "kl", "completion_reward"} <= set(log.columns)
    assert (log["completion_reward"] <= log["reward"]).all()  # e_count(prompt + completion) >= e_count(completion)
    assert (out / "reward_kl.png").stat().st_size > 1000
    base, _ = load_causal_lm("tiny-neox", device="cpu")
    tuned, tok = load_causal_lm(policy, device="cpu")
    changed = [n for (n, a), b in zip(base.named_parameters(), tuned.parameters()) if not torch.equal(a, b)]
    assert changed, "training did not change any parameter"
    assert tok.eos_token == "<|endoftext|>"
    # a complete run is returned as is; a different config in the same folder is refused
    mtime = (policy / "config.json").stat().st_mtime
    assert train_policy(preset("smoke"), out, reward_fn=e_count) == policy
    assert (policy / "config.json").stat().st_mtime == mtime
    with pytest.raises(ValueError, match="different config"):
        train_policy(preset("smoke", lr=0.5), out)


@pytest.mark.parametrize("trainer,last", [("rewardsae", "step-1"), ("trl", "checkpoint-2")])
def test_resume_from_checkpoint(trainer, last, smoke_run, tmp_path):
    "Either trainer: a run without its policy/ resumes from its newest checkpoint and ends with the same weights."
    import shutil
    if trainer == "rewardsae":
        out, policy = smoke_run
    else:
        out = tmp_path / "trl"
        policy = train_policy(preset("smoke", trainer="trl"), out, reward_fn=e_count)
        log = __import__("pandas").read_csv(out / "log.csv")
        assert list(log["step"]) == [1, 2] and {"reward", "kl", "completion_reward"} <= set(log.columns)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "policy")                # as if interrupted after the last checkpoint
    p2 = train_policy(preset("smoke", trainer=trainer), copy, reward_fn=e_count)
    info = json.loads((copy / "run_info.json").read_text())
    assert info["resumed_from"].endswith(last) and info["updates"] == 2
    a, _ = load_causal_lm(policy, device="cpu")
    b, _ = load_causal_lm(p2, device="cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_bad_reward_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="non-finite"):
        train_policy(preset("smoke"), tmp_path / "nan", reward_fn=lambda t: [float("nan")] * len(t))
    with pytest.raises(ValueError, match="returned 1 values"):
        train_policy(preset("smoke"), tmp_path / "short", reward_fn=lambda t: [0.0])
    assert not (tmp_path / "nan" / "checkpoints").exists()


def test_table4_same_weights_same_numbers(tmp_path):
    t = evaluate_completions("tiny-neox", "tiny-neox", n=12, prefix_tokens=10, with_sentiment=False, out_dir=tmp_path)
    assert list(t.index) == ["aggregate_abs_utility", "mean_utility"]
    assert (t["base"] == t["rlhf"]).all() and not t["rlhf_higher"].any()
    assert (t["diff"] == 0).all() and (t["diff_lo"] == 0).all() and (t["diff_hi"] == 0).all()   # paired: exactly 0
    comp = t.attrs["completions"]
    assert len(comp) == 24
    assert np.isclose(t.loc["aggregate_abs_utility", "base"], comp.loc[comp.model == "base", "abs_utility"].sum())
    assert (tmp_path / "table4.md").read_text() == table4_markdown(t)


def test_rl_precision_is_the_measured_choice_and_fp32_is_real(tmp_path):
    """TRL's GRPOConfig defaults to bf16=True (accelerate's bf16 autocast around the log-prob and loss passes) on every
    machine; `compute_dtype` decides instead. fp32 must then really be fp32 (its logged numbers differ from bf16's in
    the last digits) and bf16 must follow the same learning curve (same samples, so the same rewards; KL within 1e-4)."""
    import pandas as pd
    from rewardsae.rlhf import _grpo_config
    assert _grpo_config(preset("smoke", compute_dtype="float32"), tmp_path).bf16 is False
    assert _grpo_config(preset("smoke", compute_dtype="bfloat16"), tmp_path).bf16 is True
    logs = {dt: pd.read_csv(train_policy(preset("smoke", steps=4, compute_dtype=dt, trainer="trl"), tmp_path / dt).parent / "log.csv")
            for dt in ("float32", "bfloat16")}
    a, b = logs["float32"], logs["bfloat16"]
    assert len(a) == len(b) == 4 and (a.reward == b.reward).all()
    assert (a.kl - b.kl).abs().max() < 1e-4 and not a.kl.equals(b.kl) and not a.grad_norm.equals(b.grad_norm)


def test_our_trainer_refuses_several_processes(tmp_path, monkeypatch):
    "Under `accelerate launch --num_processes 4` each process would train its own copy into one folder: refused at once."
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match="one process"):
        train_policy(preset("smoke"), tmp_path / "x", reward_fn=e_count)
    assert not (tmp_path / "x").exists()
