"""Shared fixtures: tiny random Llama models and a ChatML BPE tokenizer built at test time.

Nothing is downloaded: the tokenizer is a 512-token byte-level BPE trained in well under a second
on text in this file, and the models are random 2-layer Llamas (about 0.5 MB).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Give me three tips for staying healthy. Eat well, sleep enough and move every day.",
    "Explain why the sky is blue. Sunlight scatters off air molecules, and blue light scatters most.",
    "Write a short poem about the sea. The waves roll in, the gulls cry out, the tide goes back again.",
    "How do I sort a list in Python? Use sorted(items) or items.sort() for an in-place sort.",
    "What is the capital of France? The capital of France is Paris.",
    "List five fruits: apple, banana, cherry, mango and pear.",
    "Summarise the plot of a detective story in two sentences.",
    "If a train travels 60 km in one hour, how far does it travel in three hours? 180 km.",
] * 4


def build_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_llama(out_dir: Path, tokenizer, seed: int = 0, num_labels: int | None = None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(seed)
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    if num_labels is None:
        model = LlamaForCausalLM(LlamaConfig(**kwargs))
    else:
        model = LlamaForSequenceClassification(LlamaConfig(num_labels=num_labels, **kwargs))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tokenizer(d)
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A tiny random LlamaForCausalLM + ChatML tokenizer saved as a plain HF folder (pi_0 = mu)."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("tiny_llama")
    build_tiny_llama(d, AutoTokenizer.from_pretrained(tiny_tokenizer_dir), seed=0)
    return d


@pytest.fixture(scope="session")
def tiny_model_dir_b(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A second tiny Llama with other random weights (e.g. pi_t != mu)."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("tiny_llama_b")
    build_tiny_llama(d, AutoTokenizer.from_pretrained(tiny_tokenizer_dir), seed=1)
    return d


@pytest.fixture(scope="session")
def tiny_reward_model_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A tiny random LlamaForSequenceClassification with one label (a reward model)."""
    from transformers import AutoTokenizer

    d = tmp_path_factory.mktemp("tiny_rm")
    build_tiny_llama(d, AutoTokenizer.from_pretrained(tiny_tokenizer_dir), seed=2, num_labels=1)
    return d


@pytest.fixture
def copy_model(tmp_path):
    """Copy a model folder into the test's tmp dir (for tests that write into it)."""

    def _copy(src: Path, name: str = "model") -> Path:
        dst = tmp_path / name
        shutil.copytree(src, dst)
        return dst

    return _copy


@pytest.fixture(scope="session")
def alpaca_eval_dir() -> Path:
    d = SHARED / "data" / "alpaca_eval"
    if not (d / "eval_set.json").exists():
        pytest.skip("../shared/data/alpaca_eval is absent")
    return d


@pytest.fixture
def fake_hub_cache(tmp_path, monkeypatch, tiny_model_dir, tiny_model_dir_b):
    """A local Hugging Face cache holding two commits of the hub id ``rspo-test/tiny``: commit A is the
    tiny Llama, commit B the second one (other weights); ``refs/main`` points at A. Offline, a hub id
    resolves to the snapshot of the pinned commit. Returns ``(repo_id, commit_a, commit_b)``."""
    from huggingface_hub import constants

    cache = tmp_path / "hf_cache"
    repo = cache / "models--rspo-test--tiny"
    commits = ("a" * 40, "b" * 40)
    for commit, src in zip(commits, (tiny_model_dir, tiny_model_dir_b)):
        shutil.copytree(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commits[0])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return "rspo-test/tiny", commits[0], commits[1]


# float32 machine epsilon, torch.finfo(torch.float32).eps: one float32 step at magnitude 1 is at most this
F32_EPS = 2.0**-23


def f32_tol(scale, n=1, safety: float = 8.0):
    """Tolerance for two float32 computations of one value (other kernels, batch shapes, thread counts,
    summation orders, or a float64 reference): ``safety * eps * scale * sqrt(n)``, where ``scale`` bounds
    the magnitude of the terms the value is built from and ``n`` counts the roundings that add up along
    the way (their errors add like a random walk); ``safety`` covers the few roundings per term.
    Works elementwise on tensors, arrays or floats."""
    return safety * F32_EPS * scale * n**0.5


def f32_sum_tol(sums, counts, safety: float = 8.0):
    """:func:`f32_tol` of float32 log-prob SUMS of ``counts`` same-sign token terms: the terms' magnitudes
    add up to ``|S|``, so ``safety * eps * |S| * sqrt(n)`` per sum."""
    return f32_tol(abs(sums), counts, safety)


def reward_tol(model_dir: Path) -> float:
    """:func:`f32_tol` of the reward of a Llama reward model (``build_tiny_llama(num_labels=1)``): the reward
    is ``score.weight . h`` with h the final RMSNorm's output, so its terms are bounded by
    ``|score.weight|_2 |h|_2 <= |score.weight|_2 max|norm.weight| sqrt(H)``; the roundings add up over a
    reduction of length H in each layer and the head, n = (layers + 1) H."""
    import json

    from safetensors.torch import load_file

    state = load_file(str(model_dir / "model.safetensors"))
    hidden, layers = (json.loads((model_dir / "config.json").read_text())[k]
                      for k in ("hidden_size", "num_hidden_layers"))
    scale = state["score.weight"].norm().item() * state["model.norm.weight"].abs().max().item() * hidden**0.5
    return f32_tol(scale, (layers + 1) * hidden)


@pytest.fixture(scope="session")
def e2e(tmp_path_factory, tiny_model_dir) -> Path:
    """One real run of the tiny workflow (tests/workflow_config_tiny.yaml: reg = mixed,forward_kl; T = 2;
    self-BLEU on), shared by the session: the end-to-end tests of test_workflow.py read it, and
    test_reproducibility.py compares a killed-and-resumed run and test_slurm.py a cluster run with it
    byte for byte."""
    from test_workflow import make_workdir, missing_steps, smk, tiny_e2e_config

    missing = missing_steps()
    if missing:
        pytest.skip(f"steps not implemented yet: {', '.join(missing)}")
    run = make_workdir(tmp_path_factory.mktemp("e2e"), tiny_e2e_config(tiny_model_dir))
    rc, out = smk(run, "--cores", "2", "--show-failed-logs", timeout=1800)
    assert rc == 0, out
    return run


@pytest.fixture(scope="session")
def killed_and_resumed(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny workflow killed (SIGKILL) 5 times at random moments, then resumed to the end
    (tests/test_reproducibility.py: kill_and_resume); returns the run folder."""
    from test_reproducibility import kill_and_resume

    return kill_and_resume(tmp_path_factory.mktemp("killed"), tiny_model_dir)


def pytest_collection_modifyitems(items):
    """The SLURM tests first: their cluster run spends most of its time waiting on the queue, and the
    two local workflow runs they are compared with or run beside (`e2e`, `killed_and_resumed`) are
    made meanwhile (tests/test_slurm.py's `cluster_run`). Stable: the rest keep their order."""
    items.sort(key=lambda item: item.path.name != "test_slurm.py")
