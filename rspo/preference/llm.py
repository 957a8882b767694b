"""LLM-as-judge: a pairwise verdict prompt, asked in both orders, read from the verdict-token log-odds.

For candidates a and b the judge model sees :data:`TEMPLATE` with a as "Response A" and b as
"Response B" and emits one token; from its top log-probabilities

    raw(a, b) = log P("A") - log P("B")          (tokens compared after ``strip()``; a verdict
                                                  missing from the top list gets the upper bound
                                                  min(smallest listed p, 1 - sum of listed p))

is the logit that the response shown FIRST wins. Both orders are asked and combined into an
order-debiased logit:

    M[i, j] = (raw(i, j) - raw(j, i)) / 2        (antisymmetric; = raw when there is no position bias)

``JudgeConfig.beta`` is not applied. Backends (``options.backend``):

* ``openai`` (default): ``POST {base}/chat/completions`` with ``max_tokens=1, temperature=0,
  logprobs=true, top_logprobs=20`` to any OpenAI-compatible server (OpenAI, vLLM's server, ...).
  The base URL and the key are read from the environment at each request -- ``RSPO_JUDGE_BASE_URL``
  and ``RSPO_JUDGE_API_KEY`` (other variable names via ``options.base_url_env`` / ``api_key_env``)
  -- and are never stored, logged, cached or written into results (errors do not quote them).
* ``vllm``: a local ``vllm.LLM`` (imported only then; GPU), chat-templated, same sampling.

Options: ``backend``, ``template`` (with ``{instruction}``, ``{response_a}``, ``{response_b}``),
``top_logprobs``, ``concurrency`` (parallel HTTP requests, default 4), ``timeout`` (s, default 120),
``max_retries`` (default 3), ``base_url_env``, ``api_key_env``, ``vllm`` (extra ``vllm.LLM`` kwargs).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from rspo.errors import RSPOError
from rspo.preference.base import PairwiseJudge

log = logging.getLogger(__name__)

TEMPLATE = """You are a careful, impartial judge of AI assistant answers. Read the user's instruction and \
the two responses, and decide which response follows the instruction better: more helpful, correct, \
relevant and complete. Do not let the order of the responses or their length influence you.

[Instruction]
{instruction}

[Response A]
{response_a}

[Response B]
{response_b}

Which response is better? Answer with a single letter, A or B."""

VERDICTS = ("A", "B")
_OPTIONS = {
    "backend", "template", "top_logprobs", "concurrency", "timeout", "max_retries",
    "base_url_env", "api_key_env", "vllm",
}
_EPS = 1e-6


def verdict_log_odds(top_logprobs: list[tuple[str, float]]) -> float:
    """``log P("A") - log P("B")`` from one position's top (token, logprob) list."""
    probs = {v: 0.0 for v in VERDICTS}
    found = {v: False for v in VERDICTS}
    for token, lp in top_logprobs:
        v = token.strip()
        if v in probs:
            probs[v] += math.exp(lp)
            found[v] = True
    if not any(found.values()):
        raise RSPOError(f"the judge's top tokens {[t for t, _ in top_logprobs][:10]} contain neither 'A' nor 'B'")
    listed = [math.exp(lp) for _, lp in top_logprobs]
    bound = max(_EPS, min(min(listed), 1.0 - sum(listed)))
    pa = probs["A"] if found["A"] else bound
    pb = probs["B"] if found["B"] else bound
    return math.log(max(pa, _EPS)) - math.log(max(pb, _EPS))


class LLMJudge(PairwiseJudge):
    """``judge: {name: llm, model: MODEL_NAME, options: {backend: openai | vllm, ...}}``."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if not cfg.model:
            raise RSPOError("judge llm needs judge.model (the model name at the endpoint, or a vLLM model)")
        self.check_options(_OPTIONS)
        opts = cfg.options
        self.backend = opts.get("backend", "openai")
        if self.backend not in ("openai", "vllm"):
            raise RSPOError(f"judge llm: options.backend must be openai or vllm, got {self.backend!r}")
        self.template = opts.get("template", TEMPLATE)
        self.top_logprobs = int(opts.get("top_logprobs", 20))
        self.name = f"llm:{cfg.model}"
        self._llm = None

    def settings(self) -> dict:
        return {"model": self.cfg.model, "backend": self.backend, "template": self.template,
                "top_logprobs": self.top_logprobs}

    def prompt_text(self, instruction: str, a: str, b: str) -> str:
        return self.template.format(instruction=instruction, response_a=a, response_b=b)

    def combine(self, raw: np.ndarray) -> np.ndarray:
        m = (raw - raw.T) / 2.0
        np.fill_diagonal(m, 0.0)
        return m

    def judge_pairs(self, triples):
        texts = [self.prompt_text(p, a, b) for p, a, b in triples]
        tops = self._vllm_top(texts) if self.backend == "vllm" else self._http_top(texts)
        return np.array([verdict_log_odds(t) for t in tops], dtype=np.float64)

    # ---------------------------------------------------------------- OpenAI-compatible endpoint

    def _endpoint(self) -> tuple[str, str | None]:
        opts = self.cfg.options
        url_env = opts.get("base_url_env", "RSPO_JUDGE_BASE_URL")
        key_env = opts.get("api_key_env", "RSPO_JUDGE_API_KEY")
        base = os.environ.get(url_env)
        if not base:
            raise RSPOError(
                f"judge llm (backend openai) needs the endpoint's base URL in ${url_env} "
                f"(e.g. http://localhost:8000/v1) and its key, if any, in ${key_env}"
            )
        return base.rstrip("/") + "/chat/completions", os.environ.get(key_env) or None

    def _request(self, text: str) -> list[tuple[str, float]]:
        url, key = self._endpoint()
        body = json.dumps({
            "model": self.cfg.model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": 1,
            "temperature": 0.0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
            "seed": 0,
        }).encode()
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        retries = int(self.cfg.options.get("max_retries", 3))
        timeout = float(self.cfg.options.get("timeout", 120))
        for attempt in range(retries + 1):
            try:
                with urllib.request.urlopen(urllib.request.Request(url, body, headers), timeout=timeout) as resp:
                    data = json.loads(resp.read())
                break
            except urllib.error.HTTPError as exc:  # the message names the status only, never URL or key
                if exc.code not in (408, 429, 500, 502, 503, 504) or attempt == retries:
                    raise RSPOError(f"judge llm: the endpoint answered HTTP {exc.code} ({exc.reason})") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == retries:
                    reason = getattr(exc, "reason", exc)
                    raise RSPOError(f"judge llm: the endpoint could not be reached ({type(reason).__name__})") from None
            time.sleep(min(30.0, 2.0**attempt))
        try:
            top = data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            return [(t["token"], float(t["logprob"])) for t in top]
        except (KeyError, IndexError, TypeError):
            raise RSPOError(
                "judge llm: the endpoint's answer has no choices[0].logprobs.content[0].top_logprobs; "
                "the LLM judge needs a server that returns log-probabilities"
            ) from None

    def _http_top(self, texts):
        self._endpoint()  # fail before any request when the URL is missing
        workers = max(1, int(self.cfg.options.get("concurrency", 4)))
        if workers == 1 or len(texts) == 1:
            return [self._request(t) for t in texts]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self._request, texts))  # results in input order

    # ---------------------------------------------------------------- local vLLM

    def _vllm_top(self, texts):
        try:
            import vllm
        except ImportError:
            raise RSPOError(
                "judge llm with options.backend=vllm needs the vllm package (a GPU machine: pip install vllm); "
                "or serve the model and use backend openai"
            ) from None
        if self._llm is None:
            from rspo.models import check_reference

            self._llm = vllm.LLM(model=check_reference(self.cfg.model, "judge model"), seed=0,
                                 **self.cfg.options.get("vllm", {}))
        params = vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.top_logprobs, seed=0)
        outputs = self._llm.chat([[{"role": "user", "content": t}] for t in texts], params, use_tqdm=False)
        tops = []
        for out in outputs:
            position = out.outputs[0].logprobs[0]  # {token_id: Logprob(logprob, rank, decoded_token)}
            tops.append([(lp.decoded_token or "", float(lp.logprob)) for lp in position.values()])
        return tops
