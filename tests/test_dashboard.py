"The feature dashboard: latent cards and logit tokens on known answers, the stage on a smoke run, bad input, and the pages in headless Chromium."
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rewardsae.dashboard import chromium_driver, pick_latents, screenshot, stage_dashboard, write_dashboard
from rewardsae.dashboard_data import (LatentRef, RunFolder, latent_activations, latent_card, latent_lists, load_dictionary,
                                      logit_tokens, parse_latent, review_rows)
from rewardsae.pipeline import activation_store, make_params, run_all

SMALL = dict(model="tiny-neox", preset="smoke", n_layers=1, k_features=3, k_table3=4, n_completions=6, model_diff=True,
             n_docs=24, max_length=32)


def test_latent_card_ranks_scales_and_counts_both_models():
    "A latent firing on token 7 in the tuned model only, with activation rising along the rows."
    doc, tok = np.repeat(np.arange(6), 5), np.tile([1, 7, 2, 3, 4], 6)
    tuned = np.where(tok == 7, np.arange(30) / 10.0, 0).astype(np.float32)   # review d's token 7 fires at (5d+1)/10
    base = np.zeros(30, np.float32)
    base[1] = 0.25                                                         # the base model fires once, in review 0
    card = latent_card(base, tuned, doc, tok, [f"t{i}" for i in range(10)], k_top=2, n_quantiles=2, per_quantile=1, context=1)
    top = [e for e in card["examples"] if e["group"] == "top"]
    assert [e["doc"] for e in top] == [5, 4]                               # strongest reviews first
    assert card["max_act"] == pytest.approx(2.6) and card["n_firing_docs"] == 6
    e = top[0]
    assert e["tokens"] == ["t1", "t7", "t2"] and e["peak"] == 1            # a window of ±1 around the peak
    assert e["tuned"][1] == [0, 10, 0] and e["base"][1] == [0, 0, 0]       # one colour scale: the max over both models
    quant = [e for e in card["examples"] if e["group"].startswith("quantile")]
    assert len(quant) == 2 and {e["doc"] for e in quant} <= {0, 1, 2, 3}
    assert sum(card["hist"]["tuned"]) == 6 and sum(card["hist"]["base"]) == 1
    assert card["stats"]["firing rate (tuned)"] == pytest.approx(6 / 30) and card["stats"]["firing rate (base)"] == pytest.approx(1 / 30)
    assert card["stats"]["max (base)"] == pytest.approx(0.25)


def test_logit_tokens_are_the_extremes_of_the_unembedded_direction():
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])   # 4 tokens × d=2
    out = logit_tokens(torch.tensor([2.0, -1.0]), W, ["a", "b", "c", "d"], k=2)
    assert out["promoted"] == [("a", 2.0), ("d", 1.0)]
    assert out["suppressed"] == [("c", -2.0), ("b", -1.0)]


def test_pages_read_whole_reviews_up_to_max_tokens():
    doc = np.array([0, 0, 1, 1, 1, 2])
    assert [review_rows(doc, m) for m in (None, 10, 6, 5, 3, 2, 1)] == [6, 6, 6, 5, 2, 2, 2]   # never a cut review; at least one


def test_latent_names_and_page_picking():
    assert parse_latent("crosscoder:3:17") == LatentRef("crosscoder", 3, 17)
    with pytest.raises(ValueError, match="latents: 'crosscoder:3' is not dictionary:layer:index"):
        parse_latent("crosscoder:3")
    with pytest.raises(ValueError, match="latents: 'sae:3:1'"):
        parse_latent("sae:3:1")
    import pandas as pd
    a = pd.DataFrame({"dictionary": "crosscoder", "layer": 1, "latent": [5, 6, 7]})
    b = pd.DataFrame({"dictionary": "base-large", "layer": 1, "latent": [9]})
    extra = [LatentRef("rlhf-small", 2, 0)]
    picked = pick_latents({"a": a, "b": b, "empty": "stage x not in this run"}, extra, max_pages=4)
    assert [str(r) for r in picked] == ["rlhf-small:2:0", "crosscoder:1:5", "base-large:1:9", "crosscoder:1:6"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, tuned_tiny):
    "A smoke run of tiny-neox against a perturbed copy (`conftest.tuned_tiny`), with model_diff, and its dashboard."
    p = make_params(tuned=tuned_tiny, out=str(tmp_path_factory.mktemp("runs") / "smoke"), **SMALL)
    st = run_all(p)
    dash = stage_dashboard(p, p.out, st, max_pages=40)
    return p, st, dash


def test_stage_writes_every_listed_latent_and_reuses(smoke):
    p, st, dash = smoke
    run = Path(p.out)
    lists = latent_lists(RunFolder(run), st["summary"])
    ch = lists["Crosscoder: most changed"]
    assert len(ch) > 0 and (ch.dictionary == "crosscoder").all()
    app = lists["Appendix E: top-MMCS features"]
    assert sorted(set(app.dictionary)) == ["base-large", "rlhf-large"] and len(app) == 2 * SMALL["n_layers"] * SMALL["k_features"]
    assert lists["Largest activation shifts"] == "stage what_changed not in this run"
    assert lists["Probes' flagged features"] == "stage probes not in this run"
    n = dash.result["n_pages"]
    assert n == min(40, len({(d, l, x) for df in lists.values() if not isinstance(df, str) for d, l, x in zip(df.dictionary, df.layer, df.latent)}))
    assert len(list((run / "dashboard" / "latents").glob("*.html"))) == n
    index = (run / "dashboard" / "index.html").read_text()
    assert len(set(re.findall(r'href="(latents/[^"]+)"', index))) == n
    assert "stage causal not in this run" in (run / "dashboard" / f"latents/{ch.dictionary.iloc[0]}-L{ch.layer.iloc[0]}-{ch.latent.iloc[0]}.html").read_text()
    assert dash.result["bytes"] < 3_000_000
    assert stage_dashboard(p, p.out, st, max_pages=40).reused


def test_both_models_activations_are_the_dictionaries_own(smoke):
    "Crosscoder columns: its code of the paired rows × each model's decoder norm; an SAE: the same SAE on each model's rows."
    p, st, _ = smoke
    rf = RunFolder(p.out)
    stores = {m: activation_store(st["activations"][m]) for m in ("base", "rlhf")}
    cc_ref, sae_ref = LatentRef("crosscoder", 3, 4), LatentRef("base-large", 3, 2)
    dicts = {(r.dictionary, r.layer): load_dictionary(rf, r) for r in (cc_ref, sae_ref)}
    acts = latent_activations(stores, dicts, [cc_ref, sae_ref])
    xb, xt = (torch.tensor(np.array(stores[m].activations(3))) for m in ("base", "rlhf"))
    cc, sae = dicts[("crosscoder", 3)].model, dicts[("base-large", 3)].model
    with torch.no_grad():
        code, norms, sae_t = cc.encode(torch.cat([xb, xt], 1))[:, 4], cc.decoder_norms()[4], sae.encode(xt)[:, 2]
    np.testing.assert_allclose(acts[cc_ref][0], (code * norms[0]).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acts[cc_ref][1], (code * norms[1]).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(acts[sae_ref][1], sae_t.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(acts[sae_ref][0], acts[sae_ref][1])   # layer 3 was perturbed: the tuned rows differ


def test_bad_input_names_the_missing_stage_or_the_latent(smoke, tmp_path):
    p, st, _ = smoke
    with pytest.raises(ValueError, match=r"latents: crosscoder:3:99999 is out of range: the crosscoder dictionary of layer 3 has \d+ latents"):
        write_dashboard(p.out, tmp_path / "bad", latents=["crosscoder:3:99999"])
    assert not (tmp_path / "bad").exists()                        # refused before any page is written
    with pytest.raises(ValueError, match="k_top must be an integer of at least 1, got 0"):
        write_dashboard(p.out, tmp_path / "bad", k_top=0)
    # a run folder without model_diff: the index and the asked-for crosscoder page say so; the rest is written
    run = tmp_path / "nodiff"
    shutil.copytree(p.out, run, ignore=shutil.ignore_patterns("dashboard"))
    shutil.rmtree(run / "stages" / "model_diff")
    res = write_dashboard(run, run / "dashboard", latents=["crosscoder:3:0"], max_pages=5)
    index = (run / "dashboard" / "index.html").read_text()
    assert index.count("stage model_diff not in this run") == 4   # three crosscoder classes and the reward-tracking list
    assert "stage model_diff (crosscoder of layer 3) not in this run" in (run / "dashboard" / "latents" / "crosscoder-L3-0.html").read_text()
    assert res["n_pages"] == 5 and "crosscoder:3:0" in sum(res["missing"].values(), [])


# ---- the pages in a real browser -------------------------------------------------------------------------------
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
def test_dashboard_in_headless_chromium(smoke, tmp_path):
    from selenium.webdriver.common.by import By
    p, st, dash = smoke
    root = (Path(p.out) / "dashboard").resolve()
    driver = chromium_driver(tempfile.mkdtemp(dir=tmp_path), chromium=CHROMIUM, driver=DRIVER)
    try:
        driver.get((root / "index.html").as_uri())
        links = [a.get_attribute("href") for a in driver.find_elements(By.CSS_SELECTOR, "table a")]
        assert len(set(links)) == dash.result["n_pages"] and all("/latents/" in h for h in links)
        # sorting: a click on a numeric header orders that column
        table = driver.find_elements(By.CSS_SELECTOR, "table.sortable")[0]
        col = [h.text for h in table.find_elements(By.TAG_NAME, "th")].index("relative norm")
        table.find_elements(By.TAG_NAME, "th")[col].click()
        vals = [float(r.find_elements(By.TAG_NAME, "td")[col].get_attribute("data-v")) for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        assert vals == sorted(vals)
        assert driver.save_screenshot(str(tmp_path / "index.png")) and (tmp_path / "index.png").stat().st_size > 10_000
        # every link and image of every page resolves to a file of the dashboard
        pages = [root / "index.html", *sorted((root / "latents").glob("*.html"))]
        for page in pages:
            driver.get(page.as_uri())
            refs = [e.get_attribute("href") for e in driver.find_elements(By.CSS_SELECTOR, "a[href], link[href]")]
            refs += [e.get_attribute("src") for e in driver.find_elements(By.CSS_SELECTOR, "img, script[src]")]
            for ref in refs:
                assert ref.startswith("file://"), (page.name, ref)
                assert Path(ref[len("file://"):].split("#")[0]).is_file(), (page.name, ref)
        # a crosscoder latent that fires: highlighted tokens in both models' columns and a histogram of both
        page = root / "latents" / f"crosscoder-L{dash.result['pages'][0].split(':')[1]}-{dash.result['pages'][0].split(':')[2]}.html"
        driver.get(page.as_uri())
        for m in ("base", "tuned"):
            hot = driver.find_elements(By.CSS_SELECTOR, f".example-{m} span[class^='a']")
            assert hot and all(1 <= int(s.get_attribute("class").split()[0][1:]) <= 10 for s in hot)
            assert driver.find_elements(By.CSS_SELECTOR, f"svg.histogram rect.bar-{m}")
        bg = driver.find_element(By.CSS_SELECTOR, ".tokens span.a10").value_of_css_property("background-color")
        assert bg.startswith("rgba(255, 110, 0") or bg == "rgb(255, 110, 0)"          # the local CSS was applied
        assert driver.save_screenshot(str(tmp_path / "latent.png")) and (tmp_path / "latent.png").stat().st_size > 10_000
        small = screenshot(driver, root / "index.html", tmp_path / "small.png", colours=64)
        from PIL import Image
        assert Image.open(small).mode == "P" and small.stat().st_size < (tmp_path / "index.png").stat().st_size
    finally:
        driver.quit()


def test_stages_the_smoke_run_lacks_are_read_when_present(smoke, tmp_path):
    "Planted what_changed, probes and causal stages: their token lists, shifted / flagged latents and causal rows appear."
    import json
    import pandas as pd
    p, st, _ = smoke
    run = tmp_path / "more"
    shutil.copytree(p.out, run, ignore=shutil.ignore_patterns("dashboard"))
    def plant(name, result, csvs=()):
        (run / "stages" / name).mkdir()
        (run / "stages" / name / "stage.json").write_text(json.dumps({"key": {}, "result": result, "seconds": 0}))
        for file, df in csvs:
            df.to_csv(run / "stages" / name / file, index=False)
    wc = {"methods": {"logit_diff": {"top_tokens": ["great", "awful"], "scores": [0.9, 0.4], "relevance": {"relevant": True, "fisher_p": 0.01}}}}
    plant("what_changed", wc, [("latent_shifts-crosscoder-L3-reviews.csv", pd.DataFrame({"latent": [7, 8, 9], "shift": [0.1, -0.5, 0.2]}))])
    plant("probes", {"rlhf": {"flagged": {"3": [1]}}},
          [("flags-rlhf.csv", pd.DataFrame({"layer": [3], "large_idx": [5], "small_idx": [1], "description": ["praise words"], "flagged": [True]}))])
    plant("causal", {"latent_sets": [{"layer": 3, "latent": 8, "dictionary": "crosscoder", "gain": 0.42}]})
    lists = latent_lists(RunFolder(run), {"what_changed": wc})
    sh = lists["Largest activation shifts"]
    assert sh.latent.tolist() == [8, 9, 7] and (sh.dictionary == "crosscoder").all() and (sh.layer == 3).all()   # by |shift|
    assert [str(LatentRef(d, l, x)) for d, l, x in zip(*(lists["Probes' flagged features"][c] for c in ("dictionary", "layer", "latent")))] == ["rlhf-small:3:1"]
    write_dashboard(run, run / "dashboard", {"what_changed": wc}, max_pages=200)
    index = (run / "dashboard" / "index.html").read_text()
    assert "logit_diff" in index and "&#x27;great&#x27;" in index and "fisher_p" in index
    page = (run / "dashboard" / "latents" / "crosscoder-L3-8.html").read_text()
    assert "0.42" in page and "gain" in page                           # the causal row of this latent
    assert "the causal tests did not cover this latent" in (run / "dashboard" / "latents" / "crosscoder-L3-9.html").read_text()
    assert "praise words" in (run / "dashboard" / "latents" / "rlhf-small-L3-1.html").read_text()
    write_dashboard(run, run / "dash2", None, max_pages=1)          # no summary: the token lists come from the stage's result
    assert "logit_diff" in (run / "dash2" / "index.html").read_text()
