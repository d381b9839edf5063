"The experiment runner: parameters, run folders, the whole smoke pipeline, caching, and the CLI through papermill."
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rewardsae.models import load_causal_lm
from rewardsae.pipeline import STAGES, make_explainer, make_params, open_run, run_all, stage_policy
PLAN = [s.name for s in STAGES if s.enabled(make_params(preset="smoke"))]

CLI = str(Path(sys.executable).parent / "rewardsae")   # the console script

SMALL = dict(model="tiny-neox", preset="smoke", n_layers=2, k_features=3, k_table3=4, n_completions=6)


def test_params_refuse_unknown_names_and_values():
    with pytest.raises(TypeError, match="'colour'"):
        make_params(colour="red")
    with pytest.raises(ValueError, match="unknown preset 'gpu'"):
        make_params(preset="gpu")
    with pytest.raises(ValueError, match="unknown explainer"):
        make_params(explainer="gpt5")
    p = make_params(model="EleutherAI/pythia-70m", preset="cpu")
    assert (p.tokens, p.max_length, p.sae_seeds, p.sae_arch, p.topk_k) == (250_000, 128, [0], "batchtopk", 62)
    # the large (main) dictionaries train longer in the cpu preset; elsewhere large_epochs follows sae_epochs
    assert (p.sae_epochs, p.large_epochs) == (1, 2)
    assert (make_params(preset="paper").large_epochs, make_params(preset="smoke", sae_epochs=4).large_epochs) == (3, 4)
    with pytest.raises(ValueError, match="large_epochs"):
        make_params(preset="cpu", large_epochs=0)
    # a review count asked for replaces the preset's token budget; the paper preset keeps the paper's tied L1 SAE
    assert make_params(preset="cpu", n_docs=300).tokens is None
    assert make_params(preset="cpu", n_docs=300, tokens=9000).tokens == 9000
    assert (make_params(preset="paper").sae_arch, make_params(preset="cpu", sae_arch="l1").sae_arch) == ("l1", "l1")
    assert (p.diff_layers, make_params(preset="paper").diff_layers, make_params(preset="cpu", diff_layers=2).diff_layers) == (1, 2, 2)
    assert (p.n_layers, make_params(preset="paper").n_layers, make_params(preset="cpu", n_layers=5).n_layers) == (3, 5, 5)
    assert p.out == str(Path("runs") / "pythia-70m-utility-cpu")


def test_rl_steps_overrides_the_preset_and_retrains(tmp_path):
    with pytest.raises(ValueError, match="rl_steps must be at least 1"):
        make_params(rl_steps=0)
    run = tmp_path / "r"
    one = stage_policy(make_params(model="tiny-neox", preset="smoke", rl_steps=1, out=str(run)), run)
    assert one.key["params"]["steps"] == 1
    log = pd.read_csv(one.folder / "log.csv")
    assert log["step"].tolist() == [1]
    three = stage_policy(make_params(model="tiny-neox", preset="smoke", rl_steps=3, out=str(run)), run)
    assert not three.reused and three.key["params"]["steps"] == 3
    assert pd.read_csv(three.folder / "log.csv")["step"].tolist() == [1, 2, 3]
    default = make_params(model="tiny-neox", preset="smoke", out=str(run))
    assert default.rl_steps is None


def test_run_folder_belongs_to_one_experiment(tmp_path):
    open_run(make_params(model="tiny-neox", out=str(tmp_path / "r")))
    open_run(make_params(model="tiny-neox", out=str(tmp_path / "r"), n_layers=3))   # other knobs may change
    with pytest.raises(ValueError, match="holds a run with model='tiny-neox'"):
        open_run(make_params(model="smollm2-135m", out=str(tmp_path / "r")))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("x")
    with pytest.raises(ValueError, match="not a rewardsae run"):
        open_run(make_params(out=str(tmp_path / "other")))


def test_smoke_pipeline_finds_the_perturbed_layers_and_caches(tmp_path, tuned_tiny):
    out = str(tmp_path / "run")
    st = run_all(make_params(tuned=tuned_tiny, out=out, **SMALL))
    s = json.loads((Path(out) / "summary.json").read_text())
    assert s["selected_layers"] == [3, 1]
    div = {r["layer"]: r["divergence"] for r in s["layers"]}
    assert div[3] == pytest.approx(5.0) and div[1] == pytest.approx(2.0) and div[0] == div[2] == 0
    # 2 models x 2 layers x 2 sizes x 1 seed
    assert len(s["sae"]) == 8 and {r["size"] for r in s["sae"]} == {"large", "small"}
    assert {(r["model"], r["layer"], r["method"]) for r in s["mmcs"]} == {
        (m, l, k) for m in ("base", "rlhf") for l in (3, 1) for k in ("greedy", "hungarian")}
    assert all(-1 <= r["score"] <= 1 for r in s["mmcs"])
    for table in ("table3", "table4"):
        for role in ("base", "rlhf"):
            for v in s[table][role].values():
                assert v["ci_low"] <= v["mean"] <= v["ci_high"] or v["ci_low"] != v["ci_low"]  # NaN CI with 1 seed
    assert set(s) >= {"params", "layers", "selected_layers", "sae", "mmcs", "table3", "table4", "timings", "versions"}
    report = (Path(out) / "report.md").read_text()
    assert report.startswith("# rewardsae run") and "## Appendix E" in report and "## LLM-free measure" in report
    # Appendix E of the run: both models, the top k_features of every selected layer, seed 0, sorted by similarity
    app = pd.read_csv(Path(out) / "stages" / "table3" / "appendix_e.csv")
    k = SMALL["k_features"]
    assert sorted(app.groupby(["model", "layer"]).size().items()) == [((m, l), k) for m in ("base", "rlhf") for l in (1, 3)]
    assert (app.seed == 0).all() and (app.dictionary == "large").all()
    assert all((g.similarity.diff().dropna() <= 0).all() for _, g in app.groupby(["model", "layer"]))
    assert (Path(out) / "figures" / "divergence.png").exists() and (Path(out) / "figures" / "divergence.pdf").exists()

    again = run_all(make_params(tuned=tuned_tiny, out=out, **SMALL))
    flat = lambda d: [x for v in d.values() for x in (v.values() if isinstance(v, dict) else [v]) if hasattr(x, "reused")]
    assert all(x.reused for x in flat(again))

    more = run_all(make_params(tuned=tuned_tiny, out=out, **{**SMALL, "k_features": 2}))
    assert more["divergence"].reused and all(x.reused for x in more["saes"].values())
    assert not more["explanations"]["base"].reused and not more["table3"].reused


def test_progress_line_estimates_what_is_left():
    from rewardsae.cli import progress_line
    prog = {"plan": ["policy", "saes", "table4"], "done": ["policy"], "stage": "saes", "part": "base L3 large seed 0",
            "part_done": 4, "part_total": 60, "started": 100.0}
    line = progress_line(prog, 130.0, {"policy": 300, "saes": 330, "table4": 90})
    # saes expected 330 s, 30 s in: 300 s left, + table4 90 s = 390 s = 6.5 min -> "about 6 min"
    assert line == "[2/3] saes: base L3 large seed 0 (5/60) | stage 30s | about 6 min left (if nothing is cached)"
    assert progress_line({**prog, "part": None}, 130.0) == "[2/3] saes | stage 30s"


def test_summary_reads_only_the_current_plan_and_reordered_seeds_recompute(tmp_path, tuned_tiny):
    out = str(tmp_path / "plan")
    two = run_all(make_params(tuned=tuned_tiny, out=out, **{**SMALL, "sae_seeds": [0, 1]}))
    assert two["summary"]["selected_layers"] == [3, 1]
    # the same folder, one layer: layer 1's SAE stages stay on disk but are not part of this run
    one = run_all(make_params(tuned=tuned_tiny, out=out, **{**SMALL, "n_layers": 1, "sae_seeds": [0, 1]}))
    assert (Path(out) / "stages" / "sae-base-L1-large-s0").exists()
    assert {r["layer"] for r in one["summary"]["sae"]} == {3} and len(one["summary"]["sae"]) == 8
    assert not any("L1" in k for k in one["summary"]["stage_seconds"])
    assert "sae-base-L1" not in (Path(out) / "report.md").read_text()
    # the same seeds in another order: the first pair (which MMCS compares and explanations describe) changed
    swapped = run_all(make_params(tuned=tuned_tiny, out=out, **{**SMALL, "n_layers": 1, "sae_seeds": [1, 0]}))
    assert all(s.reused for s in swapped["saes"].values())
    assert not swapped["mmcs"].reused and not swapped["explanations"]["base"].reused
    assert swapped["summary"]["base_vs_rlhf"][0]["base_seed"] == 1


def test_sae_metrics_come_from_the_final_model_on_heldout_reviews(tmp_path, tuned_tiny):
    from rewardsae.pipeline import activation_store, heldout_split
    from rewardsae.sae import load_sae
    from rewardsae.sae_eval import heldout_metrics
    st = run_all(make_params(tuned=tuned_tiny, out=str(tmp_path / "ho"), **{**SMALL, "n_layers": 1, "large_epochs": 2}))
    epochs = lambda size: int(pd.read_csv(st["saes"][("base", 3, size, 0)].folder / "curve.csv").epoch.max())
    assert (epochs("large"), epochs("small")) == (2, 1)                    # large_epochs: the main dictionaries only
    store = activation_store(st["activations"]["base"])
    split = heldout_split(store, 0.1)
    held = set(store.doc[split:].tolist())
    assert len(held) == 3 and not held & set(store.doc[:split].tolist())    # ceil(0.1 x 24) reviews, disjoint
    sae_st = st["saes"][("base", 3, "large", 0)]
    x = store.activations(3)
    m, freq = heldout_metrics(load_sae(sae_st.folder / "sae"), x[split:])
    r = sae_st.result
    assert r["fvu"] == pytest.approx(m["fvu"]) and r["l0"] == pytest.approx(m["l0"]) and r["dead_frac"] == pytest.approx(m["dead_frac"])
    assert r["n_heldout_tokens"] == len(x) - split and r["n_train_tokens"] == split
    assert r["fvu"] != pytest.approx(r["train_fvu"])          # not the running mean over training batches
    with pytest.raises(ValueError, match="at least 2"):
        heldout_split(type("S", (), {"doc": np.zeros(5, int)})(), 0.1)
    checks = st["summary"]["sae_checks"]   # 2 models x 1 layer x 2 sizes; CE loss recovered for the large ones
    assert sorted((r["model"], r["size"]) for r in checks) == [(m, z) for m in ("base", "rlhf") for z in ("large", "small")]
    assert all(("ce_loss_recovered" in r) == (r["size"] == "large") for r in checks)
    assert all("kept" not in r and {"untrained_r2", "token_r2"} <= set(r) for r in checks)


def test_cli_runs_the_experiment_notebook_with_papermill(tmp_path, tuned_tiny):
    out = tmp_path / "cli-run"
    args = ["run", "--model", "tiny-neox", "--preset", "smoke", "--tuned", tuned_tiny, "--out", str(out),
            "--param", "n_layers=1", "--param", "k_features=2", "--param", "k_table3=2", "--param", "n_completions=4"]
    r = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["selected_layers"] == [3] and s["params"]["n_layers"] == 1
    assert (out / "experiment.ipynb").exists() and "Table 4" in (out / "report.md").read_text()
    # live progress on stderr, stage by stage; no kernel transport warning
    assert all(f"[{i}/{len(PLAN)}] {name} done" in r.stderr for i, name in enumerate(PLAN, 1))
    assert "without encryption" not in r.stderr
    bad = subprocess.run([CLI, *args[:-1], "colour=red"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown parameter 'colour'" in bad.stderr
    foreign = subprocess.run([CLI, "run", "--model", "smollm2-135m", "--out", str(out)],
                             capture_output=True, text=True)
    assert foreign.returncode == 2 and "holds a run with model='tiny-neox'" in foreign.stderr


def test_ablations_contrast_the_lowest_layers(tmp_path, tuned_tiny):
    st = run_all(make_params(tuned=tuned_tiny, out=str(tmp_path / "abl"), ablations=True, **SMALL))
    a = st["summary"]["ablations"]
    assert a["lowest_layers"] == [0, 2]                      # the two untouched layers, lower first
    assert [r["l1_coef"] for r in a["fig4"]] == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    assert "| 0.0001 |" in (st["ablations"].folder / "ablations.md").read_text()
    assert {r["tied"] for r in a["table6"]} == {True, False}
    assert (st["ablations"].folder / "l1_sweep.png").exists() and (tmp_path / "abl" / "figures" / "l1_sweep.pdf").exists()


def test_experiment_notebook_parameters_are_exactly_runparams():
    import dataclasses
    import papermill as pm
    from rewardsae.cli import experiment_notebook
    from rewardsae.pipeline import RunParams
    nb = pm.inspect_notebook(str(experiment_notebook()))
    assert list(nb) == [f.name for f in dataclasses.fields(RunParams)]
    assert {k: eval(v["default"]) for k, v in nb.items()} == dataclasses.asdict(RunParams())


def test_cli_refuses_an_unreachable_hub_model_before_any_work(tmp_path):
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([CLI, "run", "--model", "EleutherAI/pythia-70m", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("rewardsae: error: model 'EleutherAI/pythia-70m'")
    assert "unreachable" in r.stderr and not (tmp_path / "x").exists()
    r = subprocess.run([CLI, "run", "--preset", "gpu"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "unknown preset 'gpu'" in r.stderr


def test_cli_refuses_bad_parameters_and_a_mismatched_tuned_model_before_any_work(tmp_path):
    from rewardsae.models import check_model_pair, load_causal_lm
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    _, tok = load_causal_lm("tiny-neox")
    wide = tmp_path / "wide"   # tiny-neox's tokenizer, but 128 wide instead of 64
    GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=256)).save_pretrained(wide)
    tok.save_pretrained(wide)
    with pytest.raises(ValueError, match="hidden_size is 128, not 64"):
        check_model_pair("tiny-neox", str(wide))
    cases = [(["--tuned", str(wide)], "hidden_size is 128, not 64"),
             (["--param", "n_layers=abc"], "n_layers must be an integer, got 'abc'"),
             (["--param", "n_layers=9"], "n_layers=9 but tiny-neox has 4 layers"),
             (["--param", "heldout_frac=1.5"], "heldout_frac must be between 0 and 1"),
             (["--param", "out=elsewhere"], "out has its own option, use --out"),
             (["--param", "probes=true", "--param", "n_layers=2"], "the tokenizer writes too few lexicon words as one token")]
    for extra, msg in cases:
        out = tmp_path / "r"
        r = subprocess.run([CLI, "run", "--model", "tiny-neox", "--preset", "smoke", "--out", str(out), *extra],
                           capture_output=True, text=True)
        assert r.returncode == 2 and msg in r.stderr.strip().splitlines()[-1], (extra, r.stderr[-500:])
        assert not (out / "stages").exists()


def test_base_vs_rlhf_compares_across_seeds_with_a_floor(tmp_path, tuned_tiny):
    st = run_all(make_params(tuned=tuned_tiny, out=str(tmp_path / "seeds"), sae_seeds=[0, 1], **SMALL))
    rows = st["summary"]["base_vs_rlhf"]
    assert [r["layer"] for r in rows] == [3, 1]
    assert all(r["base_seed"] == 0 and r["rlhf_seed"] == 1 for r in rows)       # never the same initialisation
    assert all(-1 <= r["base_vs_base_greedy"] <= 1 for r in rows)


def test_explainer_model_reaches_the_explainer_and_a_bad_one_fails_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="the tokens explainer uses no model"):
        make_params(explainer="tokens", explainer_model="gpt-4o")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("REWARDSAE_EXPLAINER_MODEL", raising=False)
    assert make_explainer(make_params(explainer="openai", explainer_model="my-model")).model == "my-model"
    assert make_explainer(make_params(explainer="openai")).model == "gpt-4"
    r = subprocess.run([CLI, "run", "--model", "tiny-neox", "--preset", "smoke", "--explainer", "local",
                        "--param", "explainer_model=tiny-neox", "--param", "n_layers=2", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith("has no chat template: use a chat/instruct model")
    assert not (tmp_path / "x").exists()


def test_batchtopk_architecture_token_budget_and_residual_hook(tmp_path, tuned_tiny):
    import json
    from rewardsae.batchtopk import BatchTopKSAE, load_any_sae
    from rewardsae.pipeline import activation_store, review_texts
    p = make_params(tuned=tuned_tiny, out=str(tmp_path / "btk"), sae_arch="batchtopk", topk_k=4, tokens=500,
                    hook="resid_post", compute_dtype="float32", **{**SMALL, "n_layers": 1})   # fp32: rows compared exactly
    texts = review_texts(p)
    _, tok = load_causal_lm("tiny-neox")
    counts = [len(tok(t, add_special_tokens=False, truncation=True, max_length=p.max_length).input_ids) for t in texts]
    assert sum(counts) >= 500 > sum(counts[:-1])                  # just enough reviews for the budget
    st = run_all(p)
    sae_st = st["saes"][("rlhf", 3, "large", 0)]
    assert sae_st.folder.name.endswith("-btk") and sae_st.result["arch"] == "batchtopk"
    assert isinstance(load_any_sae(sae_st.folder / "sae"), BatchTopKSAE)
    assert st["activations"]["base"].result["n_tokens"] == sum(counts)
    # hook=resid_post: the stored rows of layer 3 are block 3's output (the last block: HF's hidden_states[4] would be
    # after the final norm, so read the block itself)
    tuned, _ = load_causal_lm(tuned_tiny)
    store = activation_store(st["activations"]["rlhf"])
    ids = tok(texts[0], return_tensors="pt", truncation=True, max_length=p.max_length)
    seen = []
    h = tuned.gpt_neox.layers[3].register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        tuned(**ids)
    h.remove()
    hs = seen[0][0]
    rows = np.asarray(store.activations(3)[store.doc == 0], dtype=np.float32)
    assert np.allclose(rows, hs.numpy(), atol=1e-4 * float(hs.abs().max()))
    # the run's compute_dtype reaches the harvest: bf16 products, a new stage, rows close to the fp32 ones
    from rewardsae.pipeline import stage_activations
    x32 = np.array(store.activations(3))           # a copy: the new stage below takes the same folder
    bf = stage_activations(dataclasses.replace(p, compute_dtype="bfloat16"), Path(p.out), "rlhf", st["policy"], st["divergence"])
    assert not bf.reused and bf.result["compute_dtype"] == "bfloat16" and activation_store(bf).meta["compute_dtype"] == "bfloat16"
    x16 = np.asarray(activation_store(bf).activations(3))
    assert 0 < np.linalg.norm(x16 - x32) / np.linalg.norm(x32) < 0.05
    cfg = json.loads((sae_st.folder / "sae" / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.3.hook_resid_post"
    with pytest.raises(ValueError, match="unknown hook 'attn_out'"):
        make_params(hook="attn_out")
    with pytest.raises(ValueError, match="unknown sae_arch"):
        make_params(sae_arch="jumprelu")
    with pytest.raises(ValueError, match=r"tokens=1000000000 is more than the 12500 IMDb test reviews give at max_length=32"):
        review_texts(make_params(tokens=10**9))


def test_rl_command_under_accelerate_launch_writes_a_policy_that_run_takes(tmp_path):
    import os
    accelerate = str(Path(sys.executable).parent / "accelerate")
    out = tmp_path / "rl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([accelerate, "launch", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
                        "--dynamo_backend", "no", "-m", "rewardsae.cli", "rl", "--model", "tiny-neox", "--preset", "smoke",
                        "--out", str(out), "--param", "steps=2"], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "policy" / "config.json").exists() and pd.read_csv(out / "log.csv")["step"].tolist() == [1, 2]
    run = tmp_path / "analysis"
    a = subprocess.run([CLI, "run", "--model", "tiny-neox", "--preset", "smoke", "--tuned", str(out / "policy"), "--out", str(run),
                        "--param", "n_layers=1", "--param", "k_features=2", "--param", "k_table3=2", "--param", "n_completions=4"],
                       capture_output=True, text=True, timeout=900, env=env)
    assert a.returncode == 0, a.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["policy"]["path"] == str(out / "policy")
    bad = subprocess.run([CLI, "rl", "--model", "tiny-neox", "--preset", "smoke", "--out", str(tmp_path / "x"),
                          "--param", "colour=1"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown RLConfig field" in bad.stderr


def test_model_diff_of_a_model_against_itself_finds_no_change(tmp_path):
    "Base vs an unmodified copy: no tuned-only or base-only crosscoder latent, and a diff-SAE that never fires (x_tuned − x_base = 0)."
    st = run_all(make_params(tuned="tiny-neox", out=str(tmp_path / "same"), model_diff=True, n_docs=80, max_length=32,
                             **{k: v for k, v in SMALL.items() if k != "n_layers"}, n_layers=1))
    md = st["summary"]["model_diff"]
    for layer, r in md["layers"].items():
        assert r["classes"]["tuned_only"] == 0 and r["classes"]["base_only"] == 0, r["classes"]
    scan = {(r["layer"], r["dictionary"]): r for r in md["reward_scan"]}
    assert all(r["n_alive"] == 0 for (l, d), r in scan.items() if d == "diff_sae")
    base, tuned = [{(l, d): r["n_tracks"] for (l, d), r in scan.items() if d == name} for name in ("base SAE", "tuned SAE")]
    assert list(base.values()) == list(tuned.values())          # the same activations: the same scan
    assert (st["model_diff"].folder / "relative_norms.png").exists() and "## Model diffing" in (tmp_path / "same" / "report.md").read_text()


def test_a_new_stage_is_one_spec_and_appears_in_the_run_progress_summary_and_report(tmp_path, tuned_tiny):
    from rewardsae.pipeline import StageSpec
    from rewardsae.stages import cached_stage
    seen = []
    def words(p, run, st):   # a toy analysis: counts the selected layers, reads the divergence stage
        seen.append(json.loads((Path(run) / "progress.json").read_text())["stage"])
        return cached_stage(run, "toy", {"v": 1}, lambda f: {"n": len(st["divergence"].result["selected_layers"])}, deps=(st["divergence"],))
    toy = StageSpec("toy", words, lambda s: {"toy": s.result["n"] if s else None},
                    section=lambda s, p: f"\n## Toy\n\nIt counted {s['toy']} layers.\n",
                    verdict=lambda s, p: f"The toy stage counted {s['toy']} layers.", cpu_seconds=1)
    out = tmp_path / "toy"
    st = run_all(make_params(tuned=tuned_tiny, out=str(out), **SMALL), stages=[*STAGES[:2], toy])
    assert seen == ["toy"] and st["toy"].result == {"n": 2}
    prog = json.loads((out / "progress.json").read_text())
    assert prog["plan"] == ["policy", "divergence", "toy"] and prog["done"] == ["policy", "divergence", "toy"]
    s = json.loads((out / "summary.json").read_text())
    assert s["toy"] == 2 and "sae" not in s and s["selected_layers"] == [3, 1]
    report = (out / "report.md").read_text()
    verdict = report.split("## What this run found\n")[1].split("\n## ")[0]
    assert "The toy stage counted 2 layers." in verdict and "It counted 2 layers." in report
    assert report.index("## What this run found") < report.index("## Layer divergence") < report.index("## Toy")
    assert "nan" not in report


def test_the_tiny_model_runs_with_the_smoke_preset_whose_layer_count_exceeds_its_depth(tmp_path):
    from rewardsae.cli import plan_runs
    p = plan_runs(["tiny-neox"], out=str(tmp_path / "t"), preset="smoke")[0]
    assert p.n_layers == 4   # the smoke preset's 5, capped at tiny-neox's 4 blocks
    with pytest.raises(ValueError, match="n_layers=5 but tiny-neox has 4 layers"):
        plan_runs(["tiny-neox"], out=str(tmp_path / "u"), preset="smoke", n_layers=5)
