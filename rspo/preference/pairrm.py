"""PairRM (llm-blender/PairRM), native on transformers 5: no llm-blender dependency.

PairRM is a DeBERTa-v3-large encoder with a small head. One comparison of candidates A and B for
a source x is encoded as three pieces, each with its own ``[CLS] ... [SEP]``::

    [CLS] <|source|> x [SEP] [CLS] <|candidate1|> A [SEP] [CLS] <|candidate2|> B [SEP]

exactly as LLM-Blender's ``tokenize_pair`` (the PairRM-hf model card): the source piece is cut to
1224 tokens, each candidate piece to ``(2048 - len(source piece)) // 2`` tokens (right-side
truncation). With h the encoder's last hidden state at the three prefix tokens,

    logit(A > B | x) = head([h_source; h_cand1]) - head([h_source; h_cand2])

(mean over the head's ``n_tasks`` outputs, 1 for PairRM). This is one *ordered* comparison and is
position-biased: LLM-Blender's ``compare`` default (``mode="[A,B]+[B,A]"``) debiases it as
``logit(A > B) - logit(B > A)``. :class:`PairRMJudge` returns the raw matrix of all K(K-1) ordered
comparisons (``M[i, j]`` = logit with i as candidate 1, as LLM-Blender's ``_full_predict``), and
``rspo.winrate.select_pair`` forms ``s_i = mean_j (M[i, j] - M[j, i])`` -- LLM-Blender's
``get_scores_from_cmps(policy="max_logits")``, which SPPO's ``rank.py`` uses.

Checkpoint layouts accepted (a local folder or a hub id, resolved by ``rspo.models.check_reference``):

* **llm-blender** (``llm-blender/PairRM``): ``config.json`` is LLM-Blender's RankerConfig
  (``ranker_type``, ``model_name`` = the backbone, ``drop_out``, ``n_tasks``); weights in
  ``model.safetensors`` or ``pytorch_model.bin``; the tokenizer and DeBERTa config come from
  ``model_name`` (``microsoft/deberta-v3-large``; override with ``options.tokenizer``) and get the
  four prefix tokens appended, which must then land at the last rows of the embedding matrix.
* **PairRM-hf** (``llm-blender/PairRM-hf``): a transformers ``DebertaV2Config`` (plus ``n_tasks``,
  ``drop_out``), ``model.safetensors`` with the same keys, tokenizer files holding the prefixes.

Both load with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rspo.errors import RSPOError
from rspo.models import check_reference, is_local, resolve_dtype
from rspo.preference.base import PairwiseJudge

log = logging.getLogger(__name__)

DEFAULT_MODEL = "llm-blender/PairRM"
SOURCE_PREFIX = "<|source|>"
CAND1_PREFIX = "<|candidate1|>"
CAND2_PREFIX = "<|candidate2|>"
CAND_PREFIX = "<|candidate|>"
PREFIX_TOKENS = [SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX, CAND_PREFIX]  # ids 128001..128004 in PairRM
SOURCE_MAX_LENGTH = 1224
CANDIDATE_MAX_LENGTH = 412
MAX_LENGTH = SOURCE_MAX_LENGTH + 2 * CANDIDATE_MAX_LENGTH  # 2048

#: microsoft/deberta-v3-large, the PairRM backbone (vocabulary resized to 128005 by PairRM).
DEBERTA_V3_LARGE = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    hidden_act="gelu",
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
    layer_norm_eps=1e-7,
    relative_attention=True,
    position_buckets=256,
    max_position_embeddings=512,
    max_relative_positions=-1,
    position_biased_input=False,
    type_vocab_size=0,
    norm_rel_ebd="layer_norm",
    pos_att_type="p2c|c2p",
    share_att_key=True,
    vocab_size=128005,
)

_EMBEDDINGS_KEY = "pretrained_model.embeddings.word_embeddings.weight"
# non-persistent in transformers >= 4.31, but present in checkpoints written by older versions
_STALE_KEYS = ("pretrained_model.embeddings.position_ids",)


class PairRMModel(nn.Module):
    """DeBERTa-v2 backbone (``pretrained_model``) + PairRM's head (``head_layer``).

    The attribute names and the Sequential indices (``head_layer.1``, ``head_layer.4``) are those
    of LLM-Blender's ``CrossCompareReranker`` / ``DebertaV2PairRM``, so its state dicts load
    strictly. ``config.drop_out`` (0.05) and ``config.n_tasks`` (1) are read when present.
    """

    def __init__(self, config):
        super().__init__()
        from transformers import DebertaV2Model

        hidden = config.hidden_size
        dropout = float(getattr(config, "drop_out", 0.05))
        self.n_tasks = int(getattr(config, "n_tasks", 1))
        self.pretrained_model = DebertaV2Model(config)
        self.head_layer = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(2 * hidden, hidden),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(hidden, self.n_tasks),
        )

    def forward(self, input_ids, attention_mask, source_pos, cand1_pos, cand2_pos) -> torch.Tensor:
        """logit(candidate 1 > candidate 2) per row; ``*_pos`` are the prefix-token positions (B,)."""
        h = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        rows = torch.arange(h.shape[0], device=h.device)
        h_src, h_1, h_2 = h[rows, source_pos], h[rows, cand1_pos], h[rows, cand2_pos]
        left = self.head_layer(torch.cat([h_src, h_1], dim=-1))
        right = self.head_layer(torch.cat([h_src, h_2], dim=-1))
        return (left - right).mean(dim=-1)


# --------------------------------------------------------------------------- encoding


def encode_prompt_candidates(tokenizer, source: str, candidates: Sequence[str]):
    """Token ids of one prompt's pieces, as LLM-Blender's ``CrossCompareCollator`` with one prompt per
    batch (``Blender.rank(..., batch_size=1)``, the authors' ``rank.py``).

    Every literal separator token (``[SEP]``) in the texts becomes a space (the collator's
    ``.replace(sep_token, ' ')``); the source piece is cut to 1224 tokens, each candidate piece to
    ``412 + (1224 - len(source piece)) // 2 = (2048 - len(source piece)) // 2`` (right truncation).
    Returns ``(source_ids, cand1_ids, cand2_ids)``: the source piece and each candidate encoded as
    candidate 1 and as candidate 2 (lists of K id lists), each piece with ``[CLS] ... [SEP]``.
    """
    sep = tokenizer.sep_token

    def scrub(text: str) -> str:
        return text.replace(sep, " ") if sep else text

    source_ids = tokenizer.encode(scrub(SOURCE_PREFIX + source), max_length=SOURCE_MAX_LENGTH, truncation=True)
    cand_max = (MAX_LENGTH - len(source_ids)) // 2
    cand1 = [tokenizer.encode(scrub(CAND1_PREFIX + c), max_length=cand_max, truncation=True) for c in candidates]
    cand2 = [tokenizer.encode(scrub(CAND2_PREFIX + c), max_length=cand_max, truncation=True) for c in candidates]
    return source_ids, cand1, cand2


def tokenize_pair(tokenizer, source: str, a: str, b: str) -> list[int]:
    """The input ids of one comparison (A = candidate 1, B = candidate 2)."""
    source_ids, cand1, cand2 = encode_prompt_candidates(tokenizer, source, [a, b])
    return source_ids + cand1[0] + cand2[1]


class PairRMScorer:
    """A loaded PairRM: tokenizer + model + prefix ids; scores ordered pairs in padded batches."""

    def __init__(self, model: PairRMModel, tokenizer, device: str = "cpu"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.prefix_ids = tokenizer.convert_tokens_to_ids(PREFIX_TOKENS[:3])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def _row(self, source_ids, c1_ids, c2_ids):
        src_id, c1_id, c2_id = self.prefix_ids
        ids = source_ids + c1_ids + c2_ids
        return (
            ids,
            source_ids.index(src_id),
            len(source_ids) + c1_ids.index(c1_id),
            len(source_ids) + len(c1_ids) + c2_ids.index(c2_id),
        )

    def rows(self, triples: Sequence[tuple[str, str, str]]):
        """Input rows ``(ids, source_pos, cand1_pos, cand2_pos)``; each prompt and candidate is
        tokenized once however many pairs it is in."""
        by_prompt: dict[str, list[str]] = {}
        for prompt, a, b in triples:
            cands = by_prompt.setdefault(prompt, [])
            for c in (a, b):
                if c not in cands:
                    cands.append(c)
        encoded = {}
        for prompt, cands in by_prompt.items():
            source_ids, c1, c2 = encode_prompt_candidates(self.tokenizer, prompt, cands)
            index = {c: n for n, c in enumerate(cands)}
            encoded[prompt] = (source_ids, c1, c2, index)
        out = []
        for prompt, a, b in triples:
            source_ids, c1, c2, index = encoded[prompt]
            out.append(self._row(source_ids, c1[index[a]], c2[index[b]]))
        return out

    @torch.inference_mode()
    def score_rows(self, rows, batch_size: int = 8) -> np.ndarray:
        """logit(candidate 1 > candidate 2) of each row; rows are batched longest first and
        right-padded to the longest row of their batch (equal to padding to 2048 and dropping
        all-padding columns, as ``DebertaV2PairRM.forward`` does)."""
        order = sorted(range(len(rows)), key=lambda n: -len(rows[n][0]))
        out = np.zeros(len(rows), dtype=np.float64)
        size = max(1, int(batch_size))
        for start in range(0, len(order), size):
            picked = order[start : start + size]
            batch = [rows[n] for n in picked]
            width = max(len(r[0]) for r in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (row_ids, *_rest) in enumerate(batch):
                ids[b, : len(row_ids)] = torch.tensor(row_ids)
                mask[b, : len(row_ids)] = 1
            pos = torch.tensor([r[1:] for r in batch], dtype=torch.long).T.to(self.device)
            logits = self.model(ids.to(self.device), mask.to(self.device), pos[0], pos[1], pos[2])
            out[picked] = logits.float().cpu().numpy()
        return out

    def score_pairs(self, triples, batch_size: int = 8) -> np.ndarray:
        return self.score_rows(self.rows(triples), batch_size)


# --------------------------------------------------------------------------- loading


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors").exists():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    elif (path / "pytorch_model.bin").exists():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise RSPOError(f"PairRM folder {path} has neither model.safetensors nor pytorch_model.bin")
    for key in _STALE_KEYS:
        state.pop(key, None)
    if _EMBEDDINGS_KEY not in state:
        raise RSPOError(f"{path}: not a PairRM checkpoint (no {_EMBEDDINGS_KEY!r})")
    return state


def _load_config_and_tokenizer(path: Path, tokenizer_ref: str | None):
    """DeBERTa config + tokenizer of either layout; see the module docstring."""
    from transformers import AutoTokenizer, DebertaV2Config

    meta = json.loads((path / "config.json").read_text()) if (path / "config.json").exists() else {}
    if meta.get("model_type") in ("deberta-v2", "deberta_v2"):  # PairRM-hf
        config = DebertaV2Config.from_pretrained(path)
        tok_path = check_reference(tokenizer_ref, "PairRM tokenizer") if tokenizer_ref else str(path)
    elif "ranker_type" in meta or "model_name" in meta:  # llm-blender
        if meta.get("ranker_type", "pairranker") != "pairranker":
            raise RSPOError(f"{path}: ranker_type {meta.get('ranker_type')!r} is not a PairRM (pairranker)")
        backbone = meta.get("model_name") or "microsoft/deberta-v3-large"
        if backbone == "microsoft/deberta-v3-large" and not is_local(backbone):
            config = DebertaV2Config(**DEBERTA_V3_LARGE)  # known: no download for the config
        else:
            config = DebertaV2Config.from_pretrained(check_reference(backbone, "PairRM backbone"))
        tok_path = check_reference(tokenizer_ref or backbone, "PairRM tokenizer")
        config.drop_out = meta.get("drop_out", 0.05)
        config.n_tasks = meta.get("n_tasks", 1)
    else:
        raise RSPOError(
            f"{path}: no PairRM config.json (expected LLM-Blender's RankerConfig or a deberta-v2 config)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_path)
    except OSError as exc:
        raise RSPOError(f"PairRM tokenizer {tok_path!r} could not be loaded: {str(exc).splitlines()[0]}") from None
    return config, tokenizer


def load_pairrm(
    ref: str = DEFAULT_MODEL, tokenizer: str | None = None, device: str | None = None, dtype: str = "auto"
) -> PairRMScorer:
    """Load PairRM from a hub id or a local folder in either layout (strict state-dict load).

    ``dtype`` ``auto`` = fp32 on CPU, fp16 on CUDA (LLM-Blender's choice: the checkpoint says
    ``fp16: true``).
    """
    path = Path(check_reference(ref, "PairRM model"))
    state = _read_weights(path)
    config, tok = _load_config_and_tokenizer(path, tokenizer)
    vocab_rows = state[_EMBEDDINGS_KEY].shape[0]
    missing = [t for t in PREFIX_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing)
    ids = tok.convert_tokens_to_ids(PREFIX_TOKENS)
    if len(tok) != vocab_rows or max(ids) >= vocab_rows:
        raise RSPOError(
            f"PairRM tokenizer has {len(tok)} tokens (prefix ids {ids}) but the checkpoint has {vocab_rows} "
            f"embedding rows: wrong tokenizer for this checkpoint (PairRM needs deberta-v3-large's, 128001 "
            f"tokens, plus the 4 prefix tokens at 128001-128004)"
        )
    config.vocab_size = vocab_rows
    model = PairRMModel(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RSPOError(f"{path}: PairRM weights do not match the model: {exc}") from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype in (None, "auto"):
        torch_dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    else:
        torch_dtype = resolve_dtype(dtype)
    model.to(device=device, dtype=torch_dtype)
    return PairRMScorer(model, tok, device)


# --------------------------------------------------------------------------- judge


class PairRMJudge(PairwiseJudge):
    """``judge: {name: pairrm, model: llm-blender/PairRM}``; options: ``tokenizer`` (the backbone's
    tokenizer for the llm-blender layout), ``dtype`` (auto | fp32 | bf16 | fp16), ``device``.

    ``M[i, j]`` = PairRM's logit with candidate i in slot 1 and j in slot 2 (not order-debiased;
    ``select_pair`` debiases). ``beta`` is not used: the logits are PairRM's own.
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.ref = cfg.model or DEFAULT_MODEL
        self.name = "pairrm" if self.ref == DEFAULT_MODEL else f"pairrm:{self.ref}"
        self.check_options({"tokenizer", "dtype", "device"})
        self._scorer: PairRMScorer | None = None

    def settings(self) -> dict:
        opts = self.cfg.options
        device = opts.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        return {"model": self.ref, "tokenizer": opts.get("tokenizer"), "dtype": opts.get("dtype", "auto"),
                "device_type": str(device).split(":")[0]}

    @property
    def scorer(self) -> PairRMScorer:
        if self._scorer is None:  # loaded on first use: a fully cached rescoring never loads it
            opts = self.cfg.options
            self._scorer = load_pairrm(self.ref, opts.get("tokenizer"), opts.get("device"), opts.get("dtype", "auto"))
        return self._scorer

    def judge_pairs(self, triples):
        return self.scorer.score_pairs(triples, self.cfg.batch_size)
