"The `openai` explainer end to end against a real OpenAI-compatible server: `transformers serve` on 127.0.0.1 with the packaged SmolLM2-135M-Instruct."
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from rewardsae.examples import Example, FeatureExamples, scale_activations
from rewardsae.explain import explain_features, get_explainer
from rewardsae.models import builtin_path
from rewardsae.scores import score_explanations

TRANSFORMERS = str(Path(sys.executable).parent / "transformers")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    folder = str(builtin_path("smollm2-135m"))
    port = free_port()
    proc = subprocess.Popen([TRANSFORMERS, "serve", folder, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):                       # bounded wait: at most 2 minutes for the model to load
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with code {proc.returncode}")
            try:
                if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("transformers serve did not answer /health within 2 minutes")
        yield url + "/v1", folder
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def feature():
    def ex(doc, toks):
        a = np.array([8.0 if t.strip() == "great" else 0.0 for t in toks])
        return Example(doc, toks, a, scale_activations(a, 8.0))
    return FeatureExamples(7, 8.0, top=[ex(0, ["A", " great", " film", "."]), ex(1, ["So", " great", "!"])],
                           heldout_top=[ex(2, ["The", " cast", " is", " great"])], random=[ex(3, ["It", " rained", "."])],
                           n_firing_docs=12)


def test_openai_explainer_against_transformers_serve(server, tmp_path):
    url, model = server
    kw = dict(base_url=url, api_key="local", model=model, cache=tmp_path / "cache", explain_tokens=30, simulate_tokens=60)
    ex = get_explainer("openai", **kw)
    fx = {7: feature()}
    desc = explain_features(ex, fx, progress=False)
    assert desc.status.tolist() == ["ok"] and desc.description[0].strip() != ""
    scores = score_explanations(ex, desc, fx, progress=False)
    assert scores.n_tokens.tolist() == [7]                           # the 4 + 3 held-out tokens were simulated
    assert ex.n_requests == 1 + 2                                    # one explanation, one simulation per held-out review
    again = get_explainer("openai", **kw)                            # a re-run is served from the cache: no request
    desc2 = explain_features(again, fx, progress=False)
    scores2 = score_explanations(again, desc2, fx, progress=False)
    assert again.n_requests == 0 and desc2.description.tolist() == desc.description.tolist()
    assert scores2.score.tolist() == scores.score.tolist() or (np.isnan(scores.score[0]) and np.isnan(scores2.score[0]))
