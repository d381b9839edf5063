"Explainers: the openai path against a local OpenAI-compatible server (prompt, retries, timeouts, cache), parsing, tokens."
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from rewardsae.examples import Example, scale_activations
from rewardsae.explain import (SYSTEM_PROMPT, ExplainerConfigError, TokenExplainer, explain_features, get_explainer,
                               parse_simulation)
from rewardsae.examples import FeatureExamples


class FakeServer:
    """A chat-completions endpoint on 127.0.0.1. `script` is a list of actions used in order, one per request:
    ("ok", text), ("status", code), ("slow", seconds, text). After the script runs out it answers ("ok", default)."""

    def __init__(self, script=(), default="A feature for praise."):
        self.script, self.default, self.requests = list(script), default, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                action = server.script.pop(0) if server.script else ("ok", server.default)
                if action[0] == "status":
                    payload = json.dumps({"error": {"message": f"fake {action[1]}", "type": "x"}}).encode()
                    self.send_response(action[1])
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                if action[0] == "slow":
                    time.sleep(action[1])
                text = action[-1]
                payload = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": text}}],
                                      "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def examples():
    a = np.array([0.0, 2.0, 4.0])
    b = np.array([1.0, 0.0, 0.0])
    return [Example(3, ["The", " great", "\tfilm"], a, scale_activations(a, 4.0)),
            Example(9, ["So", " good", "\n"], b, scale_activations(b, 4.0))]


def make(server, tmp_path, **kw):
    return get_explainer("openai", base_url=server.url, api_key="test-key", model="fake-gpt", cache=tmp_path / "cache",
                         backoff=0.01, **kw)


def test_prompt_format_and_answer(server, tmp_path):
    server.script = [("ok", '  "Words of praise for a film."\n\nSecond line.')]
    ex = make(server, tmp_path)
    e = ex.explain(examples())
    assert (e.description, e.status) == ("Words of praise for a film.", "ok")
    (req,) = server.requests
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer test-key"
    body = req["body"]
    assert body["model"] == "fake-gpt" and body["temperature"] == 0
    system, user = body["messages"]
    assert system == {"role": "system", "content": SYSTEM_PROMPT}
    assert SYSTEM_PROMPT.startswith("We're studying features in an autoencoder model.")
    # records: token<TAB>activation, scaled 0-10 against max 4.0; tab and newline inside tokens escaped
    assert "Example 1:\nThe\t0\n great\t5\n\\tfilm\t10\n\nExample 2:\nSo\t3\n good\t0\n\\n\t0\n" in user["content"]
    assert user["content"].rstrip().endswith("In a single sentence, what is the feature looking for?")


def test_retries_on_429_and_500_then_success(server, tmp_path):
    server.script = [("status", 429), ("status", 500), ("status", 503), ("ok", "Fires on the word great.")]
    ex = make(server, tmp_path)
    e = ex.explain(examples())
    assert e.description == "Fires on the word great."
    assert len(server.requests) == 4 and ex.n_attempts == 4 and ex.n_requests == 1
    assert all(r["body"] == server.requests[0]["body"] for r in server.requests)


def test_timeout_is_retried(server, tmp_path):
    server.script = [("slow", 1.5, "too late"), ("ok", "In time.")]
    ex = make(server, tmp_path, timeout=0.3)
    assert ex.explain(examples()).description == "In time."
    assert ex.n_attempts == 2


def test_retries_exhausted_recorded_not_cached(server, tmp_path):
    server.script = [("status", 500)] * 3
    ex = make(server, tmp_path, max_retries=2)
    fx = FeatureExamples(5, 4.0, top=examples())
    df = explain_features(ex, {5: fx}, progress=False)
    assert df.status.tolist() == ["error: ExplainerRequestError"] and len(server.requests) == 3
    # the failure was not cached: the next run asks again and gets the default answer
    df = explain_features(ex, {5: fx}, progress=False)
    assert df.description.tolist() == ["A feature for praise."] and len(server.requests) == 4


def test_non_retryable_error_stops_at_once(server, tmp_path):
    import openai
    server.script = [("status", 401)]
    ex = make(server, tmp_path)
    with pytest.raises(openai.AuthenticationError):
        ex.explain(examples())
    assert len(server.requests) == 1


def test_cache_second_call_sends_nothing(server, tmp_path):
    ex = make(server, tmp_path)
    first = ex.explain(examples()).description
    assert len(server.requests) == 1
    again = make(server, tmp_path)          # a new client, same cache folder: a re-run
    assert again.explain(examples()).description == first
    sim1 = again.simulate(first, ["a", "b"])
    sim2 = make(server, tmp_path).simulate(first, ["a", "b"])
    assert len(server.requests) == 2 and again.n_requests == 1
    assert sim1.pred.tolist() == sim2.pred.tolist()
    # a different model is a different key
    get_explainer("openai", base_url=server.url, api_key="k", model="other", cache=tmp_path / "cache").explain(examples())
    assert len(server.requests) == 3


def test_empty_answer_recorded_as_empty(server, tmp_path):
    server.script = [("ok", "   \n ")]
    e = make(server, tmp_path).explain(examples())
    assert (e.description, e.status) == ("", "empty")


def test_simulation_prompt_and_parse(server, tmp_path):
    server.script = [("ok", "2: 8, 3: 15, 7: 4")]
    sim = make(server, tmp_path).simulate("Praise.", ["The", " great", " film"])
    assert sim.pred.tolist() == [0, 8, 10] and sim.status == "ok"
    user = server.requests[0]["body"]["messages"][1]["content"]
    assert user == "Explanation of the feature: Praise.\n\nTokens:\n1\tThe\n2\t great\n3\t film"


def test_missing_api_key_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ExplainerConfigError, match="OPENAI_API_KEY"):
        get_explainer("openai", cache=tmp_path)


def test_environment_configuration(monkeypatch, server, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    monkeypatch.delenv("REWARDSAE_EXPLAINER_MODEL", raising=False)
    ex = get_explainer("openai", cache=tmp_path)
    assert ex.model == "gpt-4"
    ex.explain(examples())
    assert server.requests[0]["auth"] == "Bearer env-key" and server.requests[0]["body"]["model"] == "gpt-4"
    monkeypatch.setenv("REWARDSAE_EXPLAINER_MODEL", "llama-3")
    assert get_explainer("openai", cache=tmp_path).model == "llama-3"


def test_unknown_explainer():
    with pytest.raises(ValueError, match="unknown explainer"):
        get_explainer("gpt5")


def test_parse_simulation_robust():
    assert parse_simulation("Token 2: 7\n5 = 3\n99: 9", 5)[0].tolist() == [0, 7, 0, 0, 3]
    assert parse_simulation("none", 3) [1] == "ok"
    p, status = parse_simulation("I think it is about movies.", 3)
    assert status == "malformed" and p.tolist() == [0, 0, 0]
    assert parse_simulation(None, 2)[1] == "empty"


def test_token_explainer_description_and_lexical_simulator():
    a1, a2 = np.array([0.0, 4.0, 2.0, 4.0]), np.array([0.0, 2.0])
    ex = [Example(0, ["The", " great", " film", " Great"], a1, scale_activations(a1, 4.0)),
          Example(1, ["A", " film"], a2, scale_activations(a2, 4.0))]
    # scaled: The 0, great 10, film 5, Great 10 | A 0, film 5 -> great: total 20 (mean 10), film: 10 (mean 5)
    e = TokenExplainer().explain(ex)
    assert e.description == 'Fires on "great" (mean 10.0, 67% of activation), "film" (mean 5.0, 33%).'
    sim = TokenExplainer().simulate(e.description, [" GREAT", "the", "film ", "x"])
    assert sim.pred.tolist() == [10, 0, 5, 0]
    silent = TokenExplainer().explain([Example(0, ["a"], np.zeros(1), np.zeros(1, int))])
    assert (silent.description, silent.status) == ("", "empty")   # no placeholder text for Table 3 to count


def test_echoed_format_example_is_not_a_prediction():
    p, status = parse_simulation("The activation pairs are separated by commas (for example, \"4: 7, 12: 3\").", 20)
    assert status == "malformed" and p.sum() == 0


def test_local_explainer_refuses_a_missing_model_or_one_without_a_chat_template():
    with pytest.raises(ExplainerConfigError, match="'/no/such/model' does not exist"):
        get_explainer("local", model="/no/such/model")
    with pytest.raises(ExplainerConfigError, match="'tiny-neox' has no chat template"):
        get_explainer("local", model="tiny-neox")


def test_explain_features_lists_dead_and_too_sparse_features_without_describing_them():
    a = np.array([0.0, 4.0])
    fire = lambda d: Example(d, ["a", " great"], a, scale_activations(a, 4.0))
    feats = {1: FeatureExamples(1, 0.0),                                                        # never fires
             2: FeatureExamples(2, 4.0, top=[fire(0), fire(1)], n_firing_docs=2),               # 2 reviews
             3: FeatureExamples(3, 4.0, top=[fire(d) for d in range(5)], heldout_top=[fire(d) for d in range(5, 10)],
                                n_firing_docs=12)}
    df = explain_features(TokenExplainer(), feats, progress=False, min_firing_docs=10).set_index("feature")
    assert df.status.tolist() == ["dead", "too_sparse", "ok"] and df.n_firing_docs.tolist() == [0, 2, 12]
    assert df.description.tolist()[:2] == ["", ""] and df.description[3].startswith('Fires on "great"')
    with pytest.raises(ValueError, match="min_firing_docs"):
        explain_features(TokenExplainer(), feats, progress=False, min_firing_docs=0)
