"""alpaca_eval's weighted AlpacaEval-2 annotator, run through alpaca_eval's own pieces.

``weighted_alpaca_eval_gpt4_turbo`` is: the prompt ``alpaca_eval_clf_gpt4_turbo/alpaca_eval_clf.txt``
(outputs labelled ``m`` = shown first and ``M`` = shown second) filled by ``alpaca_eval.utils.make_prompts``,
one completion token with the top-5 logprobs from ``openai_completions``, and ``logprob_parser``
(preference = 2 - P(m) over {m, M}). We load that config from the installed package and call those
functions directly; the output order, caching and the mapping back to reference/model are ours
(:mod:`rspo.evaluation.annotate`), so every judge shares them. Two variants (``JudgeConfig.name``):

* ``alpaca_eval_gpt4_turbo``: the official judge (GPT-4-1106-preview); needs ``OPENAI_API_KEY`` (or an
  alpaca_eval client config at ``OPENAI_CLIENT_CONFIG_PATH``). ``model`` may override the OpenAI model.
* ``alpaca_eval_vllm``: the same protocol against an OpenAI-compatible server (``vllm serve``);
  ``model`` = the served model name, base URL from ``options.base_url`` or ``$RSPO_JUDGE_BASE_URL``,
  key from ``$RSPO_JUDGE_API_KEY`` only (default ``EMPTY``; never from the config, whose values reach
  shell commands and logs). The key goes to alpaca_eval in a client config file that only this
  process can read (mode 0600), deleted when the process exits. The parser matches the
  bare tokens ``m``/``M`` among the top-5 logprobs; a judge whose first token is e.g. ``" m"`` gives
  NaN verdicts (null preferences), which the log reports.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from rspo.config import JudgeConfig
from rspo.errors import RSPOError

log = logging.getLogger(__name__)

OFFICIAL = "alpaca_eval_gpt4_turbo"
LOCAL = "alpaca_eval_vllm"
NAMES = (OFFICIAL, LOCAL)
ANNOTATOR_CONFIG = "weighted_alpaca_eval_gpt4_turbo"
BASE_URL_ENV = "RSPO_JUDGE_BASE_URL"
API_KEY_ENV = "RSPO_JUDGE_API_KEY"


def import_alpaca_eval():
    """``import alpaca_eval`` with a one-line error when it is missing or broken (pkg_resources, ...)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation, sklearn FutureWarnings
            import alpaca_eval  # noqa: F401
            import alpaca_eval.metrics.glm_winrate  # noqa: F401
    except ImportError as exc:
        raise RSPOError(
            f"alpaca_eval is not importable ({exc}); install the eval extra: "
            "pip install 'alpaca-eval==0.6.6' 'setuptools<81' 'scikit-learn<1.10'"
        ) from None
    import alpaca_eval

    return alpaca_eval


def load_annotator_config(name: str = ANNOTATOR_CONFIG) -> tuple[dict[str, Any], str]:
    """The annotator's YAML section and its prompt template text, from the installed alpaca_eval."""
    import yaml

    alpaca_eval = import_alpaca_eval()
    root = Path(alpaca_eval.__file__).parent / "evaluators_configs"
    cfg_path = root / name / "configs.yaml"
    if not cfg_path.exists():
        raise RSPOError(f"{cfg_path}: alpaca_eval annotator config not found")
    config = yaml.safe_load(cfg_path.read_text())[name]
    template = (root / config["prompt_template"]).read_text()
    return config, template


class AlpacaEvalWeightedJudge:
    """P(second shown wins) from the weighted AlpacaEval-2 protocol; see the module docstring."""

    def __init__(self, cfg: JudgeConfig, fn_completions=None):
        if cfg.name not in NAMES:
            raise RSPOError(f"judge {cfg.name!r} is not an alpaca_eval judge ({NAMES})")
        config, self.template = load_annotator_config()
        self.completions_kwargs = dict(config["completions_kwargs"])
        self.parser_kwargs = dict(config["completion_parser_kwargs"])
        self.completion_key = config["completion_key"]
        if cfg.name == OFFICIAL:
            has_config = Path(os.environ.get("OPENAI_CLIENT_CONFIG_PATH", "/nonexistent")).is_file()
            if fn_completions is None and not (
                os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEYS") or has_config
            ):
                raise RSPOError(
                    f"judge {OFFICIAL} calls the OpenAI API: set OPENAI_API_KEY (or OPENAI_CLIENT_CONFIG_PATH); "
                    f"without it use a local judge ({LOCAL}, embedded, pairrm, reward_model)"
                )
            if cfg.model:
                self.completions_kwargs["model_name"] = cfg.model
            self.name = ANNOTATOR_CONFIG if not cfg.model else f"{ANNOTATOR_CONFIG}:{cfg.model}"
        else:
            if not cfg.model:
                raise RSPOError(f"judge {LOCAL} needs `model`: the model name the OpenAI-compatible server serves")
            base_url = cfg.options.get("base_url") or os.environ.get(BASE_URL_ENV)
            if fn_completions is None and not base_url:
                raise RSPOError(
                    f"judge {LOCAL} needs the server's base URL: set ${BASE_URL_ENV} "
                    "(e.g. http://127.0.0.1:8000/v1) or options.base_url"
                )
            if "api_key" in cfg.options:
                raise RSPOError(
                    f"judge {LOCAL}: options.api_key is not accepted: API keys are read from the environment "
                    f"only (${API_KEY_ENV})"
                )
            api_key = os.environ.get(API_KEY_ENV) or "EMPTY"
            self.completions_kwargs.update(model_name=cfg.model, requires_chatml=True)
            if base_url:
                self.completions_kwargs["client_config_path"] = _client_config(base_url, api_key)
            self.name = f"weighted_alpaca_eval_vllm:{cfg.model}"
        self.cache_key = f"{self.name}#{self.completions_kwargs['model_name']}"
        if fn_completions is None:
            from alpaca_eval.decoders import get_fn_completions

            fn_completions = get_fn_completions(config["fn_completions"])
        self.fn_completions = fn_completions

    def prompts(self, triples: list[tuple[str, str, str]]) -> list[str]:
        """The judge prompts (alpaca_eval's template; output_1 is shown first as ``m``)."""
        import pandas as pd
        from alpaca_eval.utils import make_prompts

        df = pd.DataFrame(triples, columns=["instruction", "output_1", "output_2"])
        return list(make_prompts(df, self.template, batch_size=1)[0])

    def p_second(self, triples: list[tuple[str, str, str]]) -> list[float]:
        from alpaca_eval.completion_parsers import logprob_parser

        try:
            out = self.fn_completions(prompts=self.prompts(triples), **self.completions_kwargs)
        except Exception as exc:
            raise self._endpoint_error(exc) from None
        completions = out[self.completion_key]
        values = []
        for completion in completions:
            try:
                pref = float(logprob_parser(completion, **self.parser_kwargs)[0])
            except (AssertionError, ValueError, KeyError, TypeError, IndexError):
                pref = math.nan
            values.append(pref - 1.0)  # preference in shown order: 1 + P(second shown wins)
        n_nan = sum(not math.isfinite(v) for v in values)
        if n_nan:
            log.warning("%s: %d of %d verdicts unparsable (no 'm'/'M' in the top logprobs)", self.name, n_nan, len(values))
        return values


    def _endpoint_error(self, exc: Exception) -> Exception:
        """An OpenAI client error as one line naming the status only: its body may quote the key."""
        try:
            import openai
        except ImportError:
            return exc
        if isinstance(exc, openai.APIStatusError):
            return RSPOError(f"judge {self.name}: the endpoint answered HTTP {exc.status_code} ({type(exc).__name__})")
        if isinstance(exc, openai.OpenAIError):
            return RSPOError(f"judge {self.name}: the endpoint failed ({type(exc).__name__})")
        return exc


def _client_config(base_url: str, api_key: str) -> str:
    """An alpaca_eval OpenAI client config (YAML) pointing at ``base_url``; returns its path."""
    import atexit

    import yaml

    fd, path = tempfile.mkstemp(prefix="rspo-judge-client-", suffix=".yaml")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump({"default": [{"api_key": api_key, "base_url": base_url}]}, fh)
    atexit.register(lambda: Path(path).unlink(missing_ok=True))
    return path
