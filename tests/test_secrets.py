"""API keys come only from the environment and reach no log, result, cache or error message.

Recognisable fake keys are set in the environment of real ``python -m rspo`` processes that run
every judge path reading a key (``score`` with the LLM judge, ``annotate`` with both alpaca_eval
judges) against a stub OpenAI-compatible server on 127.0.0.1. The stub checks that the key did
arrive (so the path really read it), answers a bounded number of requests and stops itself. Then
every file the steps wrote, their stdout/stderr and the temporary folder are searched for the keys.
The stub also answers one model with HTTP 401 and the key echoed in the body (as OpenAI does): the
error must not quote it either.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rspo.artifacts import read_json, read_table, write_json, write_table

# Tolerances: float64 arithmetic against formulas written out here; they differ only in the order of
# operations, a few float64 steps (2.2e-16 relative) at magnitudes <= ~100, so pytest.approx's default
# (rel 1e-6) and abs=1e-12 leave orders of magnitude of room and still catch any wrong formula.

OPENAI_KEY = f"sk-rspo-test-CANARY-{uuid.uuid4().hex}"
JUDGE_KEY = f"rspo-judge-CANARY-{uuid.uuid4().hex}"
MAX_REQUESTS = 64
# every verdict token a judge looks for: A/B (rspo's LLM judge), m/M (alpaca_eval's protocol)
TOP = [("A", -0.2), ("B", -1.8), ("m", -0.3), ("M", -1.5)]


class Stub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), Handler)
        self.auth: list[str] = []
        self.lock = threading.Lock()
        self.timer = threading.Timer(300, self.shutdown)  # stops itself whatever happens
        self.timer.daemon = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):  # noqa: N802 (http.server's name)
        server: Stub = self.server
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        auth = self.headers.get("Authorization", "")
        with server.lock:
            server.auth.append(auth)
            n = len(server.auth)
        if n > MAX_REQUESTS:
            threading.Thread(target=server.shutdown, daemon=True).start()
            return self._send(503, {"error": {"message": "stub: request budget spent"}})
        if body.get("model") == "deny":  # an auth error that echoes the key, as OpenAI's (masked) does
            return self._send(401, {"error": {"message": f"Incorrect API key provided: {auth[7:]}"}})
        top = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in TOP]
        return self._send(200, {
            "id": "stub", "object": "chat.completion", "created": 0, "model": body.get("model", "stub"),
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "A"},
                         "logprobs": {"content": [{"token": "A", "logprob": -0.2, "bytes": [65], "top_logprobs": top}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
        })

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def stub():
    server = Stub()
    server.timer.start()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.timer.cancel()
    server.shutdown()
    server.server_close()


def rspo(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rspo", "-v", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_keys_reach_no_output(stub, tmp_path):
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()
    tmp.mkdir()
    env = dict(os.environ, OPENAI_API_KEY=OPENAI_KEY, RSPO_JUDGE_API_KEY=JUDGE_KEY, RSPO_JUDGE_BASE_URL=stub.url,
               OPENAI_API_BASE=stub.url, TMPDIR=str(tmp), HF_HUB_OFFLINE="1", OPENAI_MAX_RETRIES="0")
    write_table(work / "responses.jsonl", [
        {"prompt_id": "a", "prompt": "Name a colour.", "responses": ["Red.", "Blue, I think."], "num_tokens": [2, 4],
         "finish_reasons": ["stop", "stop"], "generator": "m", "sampling": {"n": 2}}], "responses")
    write_json(work / "outputs.json", [{"instruction": "Name a colour.", "output": "Red.", "generator": "model"}])
    write_json(work / "reference.json", [{"instruction": "Name a colour.", "output": "Blue.", "generator": "ref"}])
    llm = {"name": "llm", "model": "stub-judge", "cache_dir": str(work / "cache"), "options": {"concurrency": 1}}
    runs = {
        "score": ["score", "--responses", "responses.jsonl", "--out", "preferences.jsonl", "--params", json.dumps(llm)],
        "vllm": ["annotate", "--outputs", "outputs.json", "--reference", "reference.json", "--out", "ann_vllm.json",
                 "--params", json.dumps({"name": "alpaca_eval_vllm", "model": "stub-judge"}), "--no-progress"],
        "gpt4": ["annotate", "--outputs", "outputs.json", "--reference", "reference.json", "--out", "ann_gpt4.json",
                 "--params", json.dumps({"name": "alpaca_eval_gpt4_turbo"}), "--no-progress",
                 "--cache-dir", "cache_gpt4"],
        "denied": ["score", "--responses", "responses.jsonl", "--out", "denied.jsonl",
                   "--params", json.dumps({**llm, "model": "deny", "cache_dir": None})],
        "denied_vllm": ["annotate", "--outputs", "outputs.json", "--reference", "reference.json", "--out", "d.json",
                        "--params", json.dumps({"name": "alpaca_eval_vllm", "model": "deny"}), "--no-progress"],
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = {k: pool.submit(rspo, args, env, work) for k, args in runs.items()}
        procs = {k: f.result() for k, f in done.items()}

    for key in ("score", "vllm", "gpt4"):
        assert procs[key].returncode == 0, procs[key].stderr[-3000:]
    # the steps did their work with the keys: 2 ordered pairs (LLM judge), 1 annotation per alpaca judge
    prefs = read_table(work / "preferences.jsonl", "preferences")
    assert prefs[0]["logits"][0][1] == pytest.approx(0.0, abs=1e-12)  # same verdict in both orders: no preference
    for name in ("ann_vllm.json", "ann_gpt4.json"):
        assert read_json(work / name)[0]["preference"] is not None
    assert f"Bearer {JUDGE_KEY}" in stub.auth and f"Bearer {OPENAI_KEY}" in stub.auth
    for key, line in [
        ("denied", "rspo score: error: judge llm: the endpoint answered HTTP 401 (Unauthorized)"),
        ("denied_vllm", "rspo annotate: error: judge weighted_alpaca_eval_vllm:deny: the endpoint answered "
                        "HTTP 401 (AuthenticationError)"),
    ]:
        assert procs[key].returncode == 1, procs[key].stderr[-3000:]
        assert procs[key].stderr.strip().splitlines()[-1] == line

    texts = {f"{k}.stdout": p.stdout for k, p in procs.items()} | {f"{k}.stderr": p.stderr for k, p in procs.items()}
    files = [p for p in [*work.rglob("*"), *tmp.rglob("*")] if p.is_file()]
    assert {p.name for p in files} >= {"preferences.jsonl", "ann_vllm.json", "ann_gpt4.json", "judgements.sqlite"}
    texts |= {str(p): p.read_bytes().decode("utf-8", "replace") for p in files}
    for key in (OPENAI_KEY, JUDGE_KEY):
        leaks = [name for name, text in texts.items() if key in text or key.split("-")[-1] in text]
        assert leaks == [], f"{key[:14]}... found in {leaks}"
    # alpaca_eval gets the local judge's key in a client config (mode 0600) that is gone with the process
    assert not list(tmp.iterdir())


def test_redaction_of_logs_errors_and_tracebacks(monkeypatch, capsys):
    import logging

    from rspo import redact

    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-0123456789")
    monkeypatch.setenv("OPENAI_API_KEYS", "sk-first-key-123,sk-second-key-456")
    monkeypatch.setenv("RSPO_JUDGE_API_KEY", "EMPTY")  # a placeholder: too short to be a key
    monkeypatch.setenv("PATH_LIKE", "tok-0123456789")  # not a secret name, but the same value is masked
    assert redact.secret_values() == sorted(
        ["sk-first-key-123,sk-second-key-456", "sk-second-key-456", "sk-first-key-123", "tok-0123456789"],
        key=len, reverse=True)
    assert redact.redact("a tok-0123456789 b sk-second-key-456 EMPTY") == "a *** b *** EMPTY"
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "key %s", ("sk-first-key-123",), None)
    try:
        raise ValueError("echoed tok-0123456789")
    except ValueError as exc:
        record.exc_info = (ValueError, exc, exc.__traceback__)
    assert redact.RedactingFilter().filter(record)
    assert record.getMessage() == "key ***" and "echoed ***" in record.exc_text and "tok-0" not in record.exc_text
    import sys

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # restored after the test
    redact.install()
    sys_hook = sys.excepthook
    try:
        raise RuntimeError("boom sk-second-key-456")
    except RuntimeError as exc:
        sys_hook(RuntimeError, exc, exc.__traceback__)
    err = capsys.readouterr().err
    assert "RuntimeError: boom ***" in err and "sk-second" not in err
