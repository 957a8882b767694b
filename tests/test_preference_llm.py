"""LLM-as-judge against a stub OpenAI-compatible server on 127.0.0.1 (no network)."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from rspo.config import JudgeConfig
from rspo.errors import RSPOError
from rspo.preference import get_judge
from rspo.preference.llm import verdict_log_odds

# Tolerances: float64 arithmetic against formulas written out here; they differ only in the order of
# operations, a few float64 steps (2.2e-16 relative) at magnitudes <= ~100, so pytest.approx's default
# (rel 1e-6) and abs=1e-12 leave orders of magnitude of room and still catch any wrong formula.

KEY = "sk-test-secret-1234"
QUALITY = {"great answer": 2.0, "okay answer": 1.0, "bad answer": -0.5}
BIAS = 0.7  # the stub judge favours whichever response is shown first
OTHER = 0.1  # probability mass the stub gives to a non-verdict token


def _sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server = self.server
        text = body["messages"][0]["content"]
        a = re.search(r"\[Response A\]\n(.*?)\n\n\[Response B\]", text, re.S).group(1)
        b = re.search(r"\[Response B\]\n(.*?)\n\nWhich", text, re.S).group(1)
        with server.lock:
            server.requests.append({"auth": self.headers.get("Authorization"), "body": body, "a": a, "b": b})
        if server.status != 200:
            self.send_response(server.status)
            self.end_headers()
            return
        z = QUALITY[a] - QUALITY[b] + BIAS  # the stub's log-odds that A (shown first) wins
        top = [
            {"token": "A", "logprob": math.log((1 - OTHER) * _sigmoid(z))},
            {"token": " B", "logprob": math.log((1 - OTHER) * _sigmoid(-z))},
            {"token": "The", "logprob": math.log(OTHER)},
        ]
        payload = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "A"},
                                "logprobs": {"content": [{"token": "A", "logprob": top[0]["logprob"],
                                                          "top_logprobs": top}]}}]}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def stub(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.requests, server.lock, server.status = [], threading.Lock(), 200
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # the stub is local: never go through a proxy
    monkeypatch.setenv("RSPO_JUDGE_BASE_URL", url)
    monkeypatch.setenv("RSPO_JUDGE_API_KEY", KEY)
    server.url = url
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _cfg(tmp_path, **options):
    return JudgeConfig(name="llm", model="stub-judge", cache_dir=str(tmp_path / "cache"),
                       options={"timeout": 5, "max_retries": 0, **options})


def test_both_orders_are_asked_and_combined(stub, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    cands = ["great answer", "okay answer", "bad answer"]
    judge = get_judge(_cfg(tmp_path))
    assert judge.name == "llm:stub-judge"
    m = judge.compare("Which is best?", cands)
    # every ordered pair asked exactly once: both orders of each unordered pair
    shown = sorted((r["a"], r["b"]) for r in stub.requests)
    assert shown == sorted((a, b) for a in cands for b in cands if a != b)
    req = stub.requests[0]
    assert req["auth"] == f"Bearer {KEY}"
    assert req["body"]["model"] == "stub-judge" and req["body"]["max_tokens"] == 1
    assert req["body"]["logprobs"] is True and req["body"]["temperature"] == 0
    # raw(i, j) = q_i - q_j + BIAS; M[i, j] = (raw(i, j) - raw(j, i)) / 2 = q_i - q_j: the bias cancels
    q = np.array([QUALITY[c] for c in cands])
    np.testing.assert_allclose(m, q[:, None] - q[None, :], atol=1e-9)

    # rescoring comes from the cache: no new request
    n = len(stub.requests)
    np.testing.assert_array_equal(get_judge(_cfg(tmp_path)).compare("Which is best?", cands), m)
    assert len(stub.requests) == n

    # the key and the URL are in no written file and no log record
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert KEY.encode() not in data and stub.url.encode() not in data
    assert KEY not in caplog.text and stub.url not in caplog.text


def test_concurrency_keeps_the_order(stub, tmp_path):
    cands = ["great answer", "bad answer", "okay answer", "great answer"]
    m = get_judge(_cfg(tmp_path, concurrency=8)).compare("q", cands)
    q = np.array([QUALITY[c] for c in cands])
    np.testing.assert_allclose(m, q[:, None] - q[None, :], atol=1e-9)


def test_verdict_log_odds_by_hand():
    assert verdict_log_odds([("A", math.log(0.6)), (" B", math.log(0.3))]) == pytest.approx(math.log(2.0))
    assert verdict_log_odds([("A", math.log(0.2)), ("A ", math.log(0.1)), ("B", math.log(0.6))]) == pytest.approx(
        math.log(0.3 / 0.6)
    )
    # B missing: its probability is bounded by min(smallest listed, 1 - listed mass) = min(0.03, 0.02)
    assert verdict_log_odds([("A", math.log(0.95)), ("The", math.log(0.03))]) == pytest.approx(math.log(0.95 / 0.02))
    with pytest.raises(RSPOError, match="neither"):
        verdict_log_odds([("The", -0.1), ("It", -3.0)])


def test_http_error_names_neither_url_nor_key(stub, tmp_path):
    stub.status = 401
    with pytest.raises(RSPOError, match="HTTP 401") as info:
        get_judge(_cfg(tmp_path)).compare("q", ["great answer", "bad answer"])
    assert KEY not in str(info.value) and stub.url not in str(info.value)


def test_missing_base_url(monkeypatch, tmp_path):
    monkeypatch.delenv("RSPO_JUDGE_BASE_URL", raising=False)
    with pytest.raises(RSPOError, match="RSPO_JUDGE_BASE_URL"):
        get_judge(_cfg(tmp_path)).compare("q", ["a", "b"])


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm(tmp_path):
    with pytest.raises(RSPOError, match="vllm"):
        get_judge(_cfg(tmp_path, backend="vllm")).compare("q", ["a", "b"])


def test_bad_options(tmp_path):
    with pytest.raises(RSPOError, match="unknown option"):
        get_judge(JudgeConfig(name="llm", model="m", options={"api_key": "x"}))
    with pytest.raises(RSPOError, match="backend"):
        get_judge(JudgeConfig(name="llm", model="m", options={"backend": "ollama"}))
    with pytest.raises(RSPOError, match="judge.model"):
        get_judge(JudgeConfig(name="llm"))
