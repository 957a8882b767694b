"""Native PairRM: strict loading of both checkpoint layouts, the input format, the head arithmetic,
order debiasing, batching, truncation and the full-size key layout (on the meta device)."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import f32_tol  # noqa: E402

from rspo.config import JudgeConfig  # noqa: E402
from rspo.errors import HubUnavailableError, RSPOError  # noqa: E402
from rspo.preference import debiased_logit, get_judge  # noqa: E402
from rspo.preference.pairrm import (  # noqa: E402
    DEBERTA_V3_LARGE,
    PairRMModel,
    encode_prompt_candidates,
    load_pairrm,
)

PREFIXES = ["<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>"]
WORDS = "the a is of and to in you love hate hello hi off how are sky blue why because light sun".split()


def _tiny_tokenizer():
    """A DeBERTa-v3-style Unigram tokenizer ([PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3; Metaspace) on a tiny vocabulary."""
    from transformers import DebertaV2Tokenizer

    vocab = [("[PAD]", 0.0), ("[CLS]", 0.0), ("[SEP]", 0.0), ("[UNK]", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + c, -3.0) for c in string.ascii_lowercase]
    vocab += [(c, -4.0) for c in string.ascii_letters + string.digits + string.punctuation]
    vocab += [("\u2581" + w, -1.5) for w in WORDS]
    return DebertaV2Tokenizer(vocab=vocab)


def _tiny_config(vocab_size: int):
    from transformers import DebertaV2Config

    return DebertaV2Config(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        hidden_act="gelu", layer_norm_eps=1e-7, relative_attention=True, position_buckets=256,
        max_position_embeddings=512, max_relative_positions=-1, position_biased_input=False, type_vocab_size=0,
        norm_rel_ebd="layer_norm", pos_att_type="p2c|c2p", share_att_key=True, pad_token_id=0,
    )


@pytest.fixture(scope="module")
def pairrm_dirs(tmp_path_factory):
    """A tiny random PairRM saved in the llm-blender layout (+ its backbone folder) and the PairRM-hf layout."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("pairrm")
    tok = _tiny_tokenizer()
    backbone = root / "backbone"
    tok.save_pretrained(backbone)  # without the prefix tokens, as microsoft/deberta-v3-large
    _tiny_config(len(tok)).save_pretrained(backbone)

    torch.manual_seed(0)
    cfg = _tiny_config(len(tok) + 4)
    model = PairRMModel(cfg)
    with torch.no_grad():  # larger weights than the init so that the logits depend on the texts
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5 if name.startswith("head_layer") else 0.15)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}

    blender = root / "llm-blender"
    blender.mkdir()
    (blender / "config.json").write_text(json.dumps({
        "ranker_type": "pairranker", "model_type": "deberta", "model_name": str(backbone),
        "source_maxlength": 1224, "candidate_maxlength": 412, "n_tasks": 1, "drop_out": 0.05, "fp16": True,
    }))
    save_file(state, str(blender / "model.safetensors"))

    blender_bin = root / "llm-blender-bin"
    blender_bin.mkdir()
    (blender_bin / "config.json").write_text((blender / "config.json").read_text())
    torch.save(state, blender_bin / "pytorch_model.bin")

    hf = root / "pairrm-hf"
    tok_hf = _tiny_tokenizer()
    tok_hf.add_tokens(PREFIXES)
    tok_hf.save_pretrained(hf)
    hf_cfg = _tiny_config(len(tok) + 4)
    hf_cfg.n_tasks, hf_cfg.drop_out = 1, 0.05
    hf_cfg.source_prefix_id, hf_cfg.cand1_prefix_id, hf_cfg.cand2_prefix_id = tok_hf.convert_tokens_to_ids(PREFIXES[:3])
    hf_cfg.save_pretrained(hf)
    save_file(state, str(hf / "model.safetensors"))
    return {"backbone": backbone, "blender": blender, "blender_bin": blender_bin, "hf": hf, "state": state}


def _logit_tol(state, seq_len=128, layers=2):
    """f32_tol of a float32 PairRM logit, the difference of two head outputs W2 tanh(.) + b2: the errors
    of its terms add like a random walk, so their scale is their root sum of squares, <= |W2|_2 + |b2|
    (|tanh| <= 1); roundings add over reductions of length 2H in each encoder layer and both head
    layers, and over the seq_len keys of each attention (rows here: < 128 tokens)."""
    w2, b2 = state["head_layer.4.weight"], state["head_layer.4.bias"]
    scale = (w2.norm(dim=1) + b2.abs()).max().item()
    return 2 * f32_tol(scale, (layers + 2) * 2 * w2.shape[1] + layers * seq_len)


def _judge(path, batch_size=8, cache_dir=None):
    return get_judge(JudgeConfig(name="pairrm", model=str(path), batch_size=batch_size, cache_dir=cache_dir))


def _reference_logit(dirs, source, a, b):
    """logit(a > b) computed from scratch as LLM-Blender's PairRM-hf code does it: tokenize_pair, a
    DebertaV2Model with the checkpoint's backbone weights, torch.where on the prefix ids, the head."""
    from transformers import AutoTokenizer, DebertaV2Model

    tok = AutoTokenizer.from_pretrained(dirs["hf"])
    src = tok.encode("<|source|>" + source, max_length=1224, truncation=True)
    cmax = (2048 - len(src)) // 2
    ids = src + tok.encode("<|candidate1|>" + a, max_length=cmax, truncation=True)
    ids += tok.encode("<|candidate2|>" + b, max_length=cmax, truncation=True)
    state = dirs["state"]
    backbone = DebertaV2Model(_tiny_config(state["pretrained_model.embeddings.word_embeddings.weight"].shape[0]))
    backbone.load_state_dict({k[len("pretrained_model."):]: v for k, v in state.items() if k.startswith("pretrained_model.")})
    backbone.eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        h = backbone(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[0]
    s_id, c1_id, c2_id = tok.convert_tokens_to_ids(PREFIXES[:3])
    hs, h1, h2 = (h[torch.where(x[0] == t)[0][0]] for t in (s_id, c1_id, c2_id))

    def head(v):
        z = torch.tanh(state["head_layer.1.weight"] @ v + state["head_layer.1.bias"])
        return (state["head_layer.4.weight"] @ z + state["head_layer.4.bias"]).mean()

    return float(head(torch.cat([hs, h1])) - head(torch.cat([hs, h2])))


def test_llm_blender_layout_loads_strictly_and_matches_reference(pairrm_dirs):
    scorer = load_pairrm(str(pairrm_dirs["blender"]))
    loaded = scorer.model.state_dict()
    assert set(loaded) == set(pairrm_dirs["state"])
    assert all(torch.equal(loaded[k], v) for k, v in pairrm_dirs["state"].items())
    assert scorer.tokenizer.convert_tokens_to_ids(PREFIXES) == [len(scorer.tokenizer) - 4 + i for i in range(4)]

    m = _judge(pairrm_dirs["blender"]).compare("hello!", ["hi!", "f**k off!"])
    assert m.shape == (2, 2) and m[0, 0] == 0 and m[1, 1] == 0
    tol = _logit_tol(pairrm_dirs["state"])  # float32, batched vs one unpadded row (1.4e-4 here)
    assert m[0, 1] == pytest.approx(_reference_logit(pairrm_dirs, "hello!", "hi!", "f**k off!"), rel=0, abs=tol)
    assert m[1, 0] == pytest.approx(_reference_logit(pairrm_dirs, "hello!", "f**k off!", "hi!"), rel=0, abs=tol)
    assert abs(m[0, 1]) > 100 * tol  # a real logit, far above float32 noise


def test_all_layouts_give_the_same_logits(pairrm_dirs):
    prompt, cands = "I love you!", ["I hate you!", "I love you, too!", "why is the sky blue"]
    ref = _judge(pairrm_dirs["blender"]).compare(prompt, cands)
    for layout in ("blender_bin", "hf"):
        # the same weights and rows: only float32 kernel choices could differ
        np.testing.assert_allclose(_judge(pairrm_dirs[layout]).compare(prompt, cands), ref, rtol=0,
                                   atol=_logit_tol(pairrm_dirs["state"]))


def test_swapping_candidates_flips_the_debiased_logit(pairrm_dirs):
    judge = _judge(pairrm_dirs["hf"])
    a, b, c = "the sun is light", "hi, how are you", "blue because of light"
    m = judge.compare("why is the sky blue?", [a, b, c])
    m_swapped = judge.compare("why is the sky blue?", [b, a, c])
    # the same ordered comparisons land in the permuted cells (other batch rows: float32 _logit_tol)
    tol = _logit_tol(pairrm_dirs["state"])
    assert m_swapped[0, 1] == pytest.approx(m[1, 0], rel=0, abs=tol)
    assert m_swapped[1, 0] == pytest.approx(m[0, 1], rel=0, abs=tol)
    assert m_swapped[0, 2] == pytest.approx(m[1, 2], rel=0, abs=tol)
    debiased, debiased_swapped = debiased_logit(m, 0, 1), debiased_logit(m_swapped, 0, 1)
    assert debiased == pytest.approx((m[0, 1] - m[1, 0]) / 2, rel=1e-12)  # float64 arithmetic on the cells
    assert abs(debiased) > 100 * tol
    assert debiased_swapped == pytest.approx(-debiased, rel=0, abs=tol)  # the mean of two cells within tol
    # PairRM is position-biased: the raw logit is not antisymmetric (by far more than tol)
    assert m[0, 1] != pytest.approx(-m[1, 0], rel=0, abs=100 * tol)


def test_batched_scoring_equals_one_pair_at_a_time(pairrm_dirs):
    prompts = ["hello!", "why is the sky blue? " * 3]
    cands = [["hi!", "f**k off!", "hello, how are you? I love you"],
             ["because of the sun", "blue light", "the sky is blue because light of the sun is scattered", "hi"]]
    batched = _judge(pairrm_dirs["hf"], batch_size=64).compare_many(prompts, cands)
    single = _judge(pairrm_dirs["hf"], batch_size=1).compare_many(prompts, cands)
    per_prompt = [_judge(pairrm_dirs["hf"], batch_size=3).compare(p, c) for p, c in zip(prompts, cands)]
    for b, s, p in zip(batched, single, per_prompt):
        assert b.shape == s.shape
        # other batch shapes and padding of the same float32 rows: _logit_tol
        np.testing.assert_allclose(b, s, rtol=0, atol=_logit_tol(pairrm_dirs["state"]))
        np.testing.assert_allclose(b, p, rtol=0, atol=_logit_tol(pairrm_dirs["state"]))


def test_truncation_budget(pairrm_dirs):
    scorer = load_pairrm(str(pairrm_dirs["hf"]))
    tok = scorer.tokenizer
    long_source = "hello " * 2000
    src, c1, c2 = encode_prompt_candidates(tok, long_source, ["hi " * 1000, "ok"])
    assert len(src) == 1224 and src[0] == tok.cls_token_id and src[-1] == tok.sep_token_id
    assert len(c1[0]) == (2048 - 1224) // 2 == 412 and len(c2[0]) == 412 and c1[0][-1] == tok.sep_token_id
    assert len(c1[1]) < 10  # short candidates are not padded
    short_src, c1, _ = encode_prompt_candidates(tok, "hi", ["hi " * 3000])
    assert len(short_src) == 4  # [CLS] <|source|> hi [SEP]
    assert len(c1[0]) == (2048 - 4) // 2
    # a full-length comparison (2048 tokens) equals the reference computation
    rows = scorer.rows([(long_source, "hi " * 1000, "love " * 1000)])
    assert len(rows[0][0]) == 2048
    logit = scorer.score_rows(rows)[0]
    assert logit == pytest.approx(_reference_logit(pairrm_dirs, long_source, "hi " * 1000, "love " * 1000), rel=0,
                                  abs=_logit_tol(pairrm_dirs["state"], seq_len=2048))  # float32, 2048 keys


def test_cached_rescoring_does_not_load_the_model(pairrm_dirs, tmp_path):
    prompt, cands = "hello!", ["hi!", "f**k off!", "how are you"]
    first = _judge(pairrm_dirs["hf"], cache_dir=str(tmp_path)).compare(prompt, cands)
    again = _judge(pairrm_dirs["hf"], cache_dir=str(tmp_path))
    np.testing.assert_array_equal(again.compare(prompt, cands), first)
    assert again._scorer is None  # every ordered pair came from the cache


def test_wrong_tokenizer_is_a_clear_error(pairrm_dirs, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pairrm_dirs["backbone"])
    tok.add_tokens(["extra1", "extra2"])  # two rows too many: the prefix ids would be off by two
    tok.save_pretrained(tmp_path)
    with pytest.raises(RSPOError, match="embedding rows"):
        load_pairrm(str(pairrm_dirs["blender"]), tokenizer=str(tmp_path))


def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="llm-blender/PairRM"):
        get_judge(JudgeConfig(name="pairrm")).compare("x", ["a", "b"])


def test_full_size_module_has_the_checkpoint_layout():
    from transformers import DebertaV2Config

    with torch.device("meta"):
        model = PairRMModel(DebertaV2Config(**DEBERTA_V3_LARGE))
    state = model.state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    # the key table of llm-blender/PairRM's checkpoint (peers-and-pairrm.md B.5)
    expected = {
        "pretrained_model.embeddings.word_embeddings.weight": (128005, 1024),
        "pretrained_model.embeddings.LayerNorm.weight": (1024,),
        "pretrained_model.embeddings.LayerNorm.bias": (1024,),
        "pretrained_model.encoder.rel_embeddings.weight": (512, 1024),
        "pretrained_model.encoder.LayerNorm.weight": (1024,),
        "pretrained_model.encoder.LayerNorm.bias": (1024,),
        "head_layer.1.weight": (1024, 2048),
        "head_layer.1.bias": (1024,),
        "head_layer.4.weight": (1, 1024),
        "head_layer.4.bias": (1,),
    }
    for i in range(24):
        p = f"pretrained_model.encoder.layer.{i}."
        for name in ("query_proj", "key_proj", "value_proj"):
            expected[p + f"attention.self.{name}.weight"] = (1024, 1024)
            expected[p + f"attention.self.{name}.bias"] = (1024,)
        expected[p + "attention.output.dense.weight"] = (1024, 1024)
        expected[p + "attention.output.dense.bias"] = (1024,)
        expected[p + "attention.output.LayerNorm.weight"] = (1024,)
        expected[p + "attention.output.LayerNorm.bias"] = (1024,)
        expected[p + "intermediate.dense.weight"] = (4096, 1024)
        expected[p + "intermediate.dense.bias"] = (4096,)
        expected[p + "output.dense.weight"] = (1024, 4096)
        expected[p + "output.dense.bias"] = (1024,)
        expected[p + "output.LayerNorm.weight"] = (1024,)
        expected[p + "output.LayerNorm.bias"] = (1024,)
    assert shapes == expected
    assert len(state) == 394
    assert sum(int(np.prod(s)) for s in shapes.values()) == 436_014_081


# --------------------------------------------------------------------------- LLM-Blender's own code path
#
# What SPPO's and RSPO's scripts/rank.py run: ``blender = llm_blender.Blender(); blender.loadranker(
# "llm-blender/PairRM"); blender.rank(prompts, candidates, return_scores=True, batch_size=1)``. The
# functions below transcribe, step by step, the source of yuchenlin/LLM-Blender at 2a67366 (the code
# of the llm-blender 0.0.2 wheel); each step names the file and function it comes from. Nothing here
# calls rspo.preference.pairrm: the expected values come from LLM-Blender's formulas, run on the same
# tiny checkpoint. (``tokenizer.batch_encode_plus``, which LLM-Blender calls, is the tokenizer's
# ``__call__`` on a list in transformers 5.)

BLENDER_SOURCE_MAXLENGTH = 1224  # llm-blender/PairRM config.json: source_maxlength
BLENDER_CANDIDATE_MAXLENGTH = 412  # llm-blender/PairRM config.json: candidate_maxlength


def _blender_tokenizer(dirs):
    """llm_blender/pair_ranker/model_util.py ``build_tokenizer``: AutoTokenizer of the backbone
    (``model_name``); llm_blender/pair_ranker/collator.py ``CrossCompareCollator.__init__`` then
    ``add_tokens``-es the four prefixes in this order."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(dirs["backbone"])
    tok.add_tokens(["<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>"])
    return tok


def _blender_encode_texts(tok, texts, max_length):
    """llm_blender/pair_ranker/collator.py ``encode_texts``: batch_encode_plus(max_length,
    padding='max_length', truncation=True)."""
    p = tok(texts, max_length=max_length, padding="max_length", return_tensors="pt", truncation=True)
    return p["input_ids"], p["attention_mask"]


def _blender_collate(tok, sources, candidate_lists):
    """llm_blender/pair_ranker/collator.py ``CrossCompareCollator.__call__`` (RankerDataset gives
    source = instruction + input with instruction "" in rank.py)."""
    sep_token = tok.sep_token
    # __init__: ``mannually_add_sep_token = len(tokenizer.encode(sep_token)) == 1``; a DeBERTa tokenizer
    # encodes "[SEP]" as [CLS] [SEP] [SEP], so the else branch is the one PairRM takes
    assert len(tok.encode(sep_token)) != 1
    batch_source = ["<|source|>" + s for s in sources]
    batch_candidates = [["<|candidate|>" + c for c in cands] for cands in candidate_lists]
    batch_source = [s.replace(sep_token, " ") for s in batch_source]
    batch_candidates = [[c.replace(sep_token, " ") for c in cands] for cands in batch_candidates]
    source_ids, source_masks = _blender_encode_texts(tok, batch_source, BLENDER_SOURCE_MAXLENGTH)
    valid_positions = source_masks.any(dim=0)
    source_ids, source_masks = source_ids[:, valid_positions], source_masks[:, valid_positions]
    remaining_length = BLENDER_SOURCE_MAXLENGTH - valid_positions.sum().item()
    # encode_batch_text: encode_texts per prompt, stacked to [batch, n_candidates, length]
    enc = [_blender_encode_texts(tok, cands, BLENDER_CANDIDATE_MAXLENGTH + remaining_length // 2)
           for cands in batch_candidates]
    candidate_ids = torch.stack([e[0] for e in enc])
    candidate_masks = torch.stack([e[1] for e in enc])
    cand_valid_positions = candidate_masks.reshape(-1, candidate_masks.shape[-1]).any(dim=0)
    return (source_ids, source_masks, candidate_ids[:, :, cand_valid_positions],
            candidate_masks[:, :, cand_valid_positions])


def _blender_cat_ids(sep_token_id, ids1, masks1, ids2, masks2, ids3, masks3):
    """llm_blender/pair_ranker/ranker.py ``CrossCompareReranker.cat_ids``: each piece up to its last
    [SEP], in the order source, candidate 1, candidate 2; the pieces' padding moved to the end."""
    bz = ids1.shape[0]
    last = [m.eq(sep_token_id).nonzero()[:, 1].reshape(bz, -1)[:, -1] for m in (ids1, ids2, ids3)]
    cat_ids, cat_masks = [], []
    for i in range(bz):
        cat_ids.append(torch.cat([ids1[i, : last[0][i] + 1], ids2[i, : last[1][i] + 1], ids3[i, : last[2][i] + 1],
                                  ids1[i, last[0][i] + 1 :], ids2[i, last[1][i] + 1 :], ids3[i, last[2][i] + 1 :]]))
        cat_masks.append(torch.cat([masks1[i, : last[0][i] + 1], masks2[i, : last[1][i] + 1],
                                    masks3[i, : last[2][i] + 1], masks1[i, last[0][i] + 1 :],
                                    masks2[i, last[1][i] + 1 :], masks3[i, last[2][i] + 1 :]]))
    return torch.stack(cat_ids), torch.stack(cat_masks)


def _blender_ranker(dirs, state=None):
    """llm_blender/pair_ranker/model_util.py ``build_ranker`` (AutoModel of the backbone,
    resize_token_embeddings(len(tokenizer))) and ranker.py ``CrossCompareReranker.__init__``'s head:
    Sequential(Dropout, Linear(2H, H), Tanh, Dropout, Linear(H, n_tasks)); checkpoint loaded; eval()."""
    from transformers import DebertaV2Model

    state = state if state is not None else dirs["state"]
    rows, hidden = state["pretrained_model.embeddings.word_embeddings.weight"].shape
    n_tasks = state["head_layer.4.weight"].shape[0]
    backbone = DebertaV2Model(_tiny_config(rows))
    backbone.load_state_dict({k[len("pretrained_model."):]: v for k, v in state.items()
                              if k.startswith("pretrained_model.")})
    head = torch.nn.Sequential(torch.nn.Dropout(0.05), torch.nn.Linear(2 * hidden, hidden), torch.nn.Tanh(),
                               torch.nn.Dropout(0.05), torch.nn.Linear(hidden, n_tasks))
    head.load_state_dict({k[len("head_layer."):]: v for k, v in state.items() if k.startswith("head_layer.")})
    return backbone.eval(), head.eval()


def _blender_inputs(tok, source_ids, source_mask, cand1_ids, cand1_mask, cand2_ids, cand2_mask):
    """llm_blender/pair_ranker/ranker.py ``CrossCompareReranker._forward`` (encoder-only branch) up to the
    encoder call: the prefix swap, ``cat_ids`` and the trimming of all-padding columns."""
    cand_id, c1_id, c2_id = tok.convert_tokens_to_ids(["<|candidate|>", "<|candidate1|>", "<|candidate2|>"])
    cand1_ids, cand2_ids = cand1_ids.clone(), cand2_ids.clone()
    cand1_ids[torch.where(cand1_ids == cand_id)] = c1_id  # replace <candidate> with <candidate1>
    cand2_ids[torch.where(cand2_ids == cand_id)] = c2_id  # ... and <candidate2>
    input_ids, attention_mask = _blender_cat_ids(tok.sep_token_id, source_ids, source_mask, cand1_ids, cand1_mask,
                                                 cand2_ids, cand2_mask)
    keep_column_mask = attention_mask.ne(0).any(dim=0)  # trim batch padding ids
    return input_ids[:, keep_column_mask], attention_mask[:, keep_column_mask]


@torch.no_grad()
def _blender_forward(tok, ranker, input_ids, attention_mask):
    """The rest of ``_forward`` and ``reduce``: hidden_states[-1] at the prefix tokens, the head on
    [source; candidate 1] and [source; candidate 2], the mean over tasks of their difference."""
    backbone, head = ranker
    src_id, c1_id, c2_id = tok.convert_tokens_to_ids(["<|source|>", "<|candidate1|>", "<|candidate2|>"])
    outputs = backbone(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    encs = outputs.hidden_states[-1]
    source_idxs = torch.where(input_ids == src_id)
    cand1_idxs = torch.where(input_ids == c1_id)
    cand2_idxs = torch.where(input_ids == c2_id)
    source_encs = encs[source_idxs[0], source_idxs[1], :]
    cand1_encs = encs[cand1_idxs[0], cand1_idxs[1], :]
    cand2_encs = encs[cand2_idxs[0], cand2_idxs[1], :]
    left_pred_scores = head(torch.cat([source_encs, cand1_encs], dim=-1))
    right_pred_scores = head(torch.cat([source_encs, cand2_encs], dim=-1))
    return (left_pred_scores - right_pred_scores).mean(dim=-1)


def _blender_pair_inputs(tok, source, candidates):
    """Encoder inputs of every ordered pair (i, j) of one prompt, candidate i on the left (candidate 1)
    as ``_full_predict`` orders them, from a batch of that one prompt (``rank(..., batch_size=1)``)."""
    s_ids, s_mask, c_ids, c_mask = _blender_collate(tok, [source], [candidates])
    k = len(candidates)
    return {(i, j): _blender_inputs(tok, s_ids, s_mask, c_ids[:, i], c_mask[:, i], c_ids[:, j], c_mask[:, j])
            for i in range(k) for j in range(k) if i != j}


def _blender_full_predict(tok, ranker, source, candidates):
    """llm_blender/pair_ranker/ranker.py ``_full_predict`` for one prompt: the K x K compare_results,
    [i, j] = logit with candidate i on the left (diagonal 0)."""
    k = len(candidates)
    results = np.zeros((k, k))
    for (i, j), (input_ids, mask) in _blender_pair_inputs(tok, source, candidates).items():
        results[i, j] = float(_blender_forward(tok, ranker, input_ids, mask)[0])
    return results


def _blender_scores(cmp_results):
    """llm_blender/gpt_eval/utils.py ``get_scores_from_cmps(policy="max_logits")`` for one prompt:
    ``(cmp - cmp.T).mean(axis=-1)`` (the diagonal's 0 included); what ``rank(return_scores=True)`` returns."""
    return (cmp_results - cmp_results.T).mean(axis=-1)


# texts that exercise the collator: a literal [SEP] (scrubbed to a space), a source longer than 1224 tokens
# (source budget), candidates longer than the remaining candidate budget (412 + (1224 - len(source)) // 2)
LAYOUT_CASES = [
    ("hello!", ["hi!", "f**k off!", "you are [SEP] a sky"]),
    ("why is the sky[SEP]blue? " * 250, ["because " * 700, "blue light [SEP] of the sun " * 200, "hi"]),
    ("how are you " * 200, ["the sun is light " * 400, "I love you"]),
]
# the forward pass is compared on short inputs (the full-length forward: test_truncation_budget)
FORWARD_CASES = [
    ("hello!", ["hi!", "f**k off!", "you are [SEP] a sky"]),
    ("why is the sky blue? [SEP] " * 3, ["because of the sun " * 5, "blue light", "I love you, too!"]),
]


@pytest.mark.parametrize("case", range(len(LAYOUT_CASES)))
def test_input_layout_is_llm_blenders_collator_and_cat_ids(pairrm_dirs, case):
    """Input ids of every ordered pair: special tokens, [SEP] scrubbing, source/candidate truncation
    budgets and the order source, candidate 1, candidate 2 are LLM-Blender's."""
    source, cands = LAYOUT_CASES[case]
    tok = _blender_tokenizer(pairrm_dirs)
    expected = _blender_pair_inputs(tok, source, cands)
    scorer = load_pairrm(str(pairrm_dirs["blender"]))
    assert scorer.tokenizer.convert_tokens_to_ids(PREFIXES) == tok.convert_tokens_to_ids(PREFIXES)
    pairs = list(expected)
    rows = scorer.rows([(source, cands[i], cands[j]) for i, j in pairs])
    for (i, j), (ids, src_pos, c1_pos, c2_pos) in zip(pairs, rows):
        expected_ids, expected_mask = expected[(i, j)]
        assert expected_mask.all()  # one prompt, one pair: no padding left
        assert ids == expected_ids[0].tolist(), (i, j)
        assert ids.count(tok.sep_token_id) == 3 and ids.count(tok.cls_token_id) == 3
        assert (ids[src_pos], ids[c1_pos], ids[c2_pos]) == tuple(tok.convert_tokens_to_ids(PREFIXES[:3]))
    if case == 1:  # both budgets bind: a 1224-token source and 412-token candidates (2048 in all)
        assert expected[(0, 1)][0].shape[1] == BLENDER_SOURCE_MAXLENGTH + 2 * BLENDER_CANDIDATE_MAXLENGTH
    if case == 2:  # a shorter source leaves the candidates 412 + (1224 - len(source)) // 2 tokens each
        n_source = len(scorer.tokenizer.encode("<|source|>" + source))
        assert n_source < BLENDER_SOURCE_MAXLENGTH
        n_cand = BLENDER_CANDIDATE_MAXLENGTH + (BLENDER_SOURCE_MAXLENGTH - n_source) // 2
        assert expected[(0, 1)][0].shape[1] == n_source + n_cand + len(scorer.tokenizer.encode("<|candidate2|>" + cands[1]))


@pytest.mark.parametrize("case", range(len(FORWARD_CASES)))
def test_matrix_and_scores_equal_llm_blenders_full_predict(pairrm_dirs, case):
    """M[i, j] = _full_predict's compare_results[i, j] (i = candidate 1: the order of the two candidates),
    from hidden_states[-1] at the prefix tokens; select_pair's scores = get_scores_from_cmps."""
    from rspo.winrate import select_pair

    source, cands = FORWARD_CASES[case]
    expected = _blender_full_predict(_blender_tokenizer(pairrm_dirs), _blender_ranker(pairrm_dirs), source, cands)
    m = _judge(pairrm_dirs["blender"], batch_size=4).compare(source, cands)
    # float32 encoders on the same ids; ours runs rows right-padded to the longest row of a batch of 4, the
    # reference one row without padding: _logit_tol; the scores are means of differences of two cells
    tol = _logit_tol(pairrm_dirs["state"])
    np.testing.assert_allclose(m, expected, rtol=0, atol=tol)
    assert np.abs(expected + expected.T).max() > 100 * tol  # not antisymmetric: the candidates' order is pinned
    np.testing.assert_allclose(select_pair(m).scores, _blender_scores(expected), rtol=0, atol=2 * tol)


def test_compare_default_mode_is_the_difference_of_both_orders(pairrm_dirs):
    """llm_blender/blender/blender.py ``Blender.compare(mode="[A,B]+[B,A]")`` (its default) for a pairranker
    is ``scores = self.rank(inputs, [[A, B]], return_scores=True); cmp = scores[:, 0] - scores[:, 1]``,
    i.e. M[A, B] - M[B, A] = 2 * debiased_logit; ``mode="[A,B]"`` is M[A, B] alone."""
    source, (a, b) = "why is the sky blue?", ("because of light", "hi, how are you")
    expected = _blender_full_predict(_blender_tokenizer(pairrm_dirs), _blender_ranker(pairrm_dirs), source, [a, b])
    scores = _blender_scores(expected)
    m = _judge(pairrm_dirs["hf"]).compare(source, [a, b])
    tol = _logit_tol(pairrm_dirs["state"])  # float32, other batches; each side a difference of two cells
    assert 2 * debiased_logit(m, 0, 1) == pytest.approx(scores[0] - scores[1], rel=0, abs=2 * tol)
    assert m[0, 1] == pytest.approx(expected[0, 1], rel=0, abs=tol)  # mode="[A,B]"


def test_final_logit_is_the_mean_over_tasks(pairrm_dirs, tmp_path):
    """``preds = (left_pred_scores - right_pred_scores).mean(dim=-1)`` (ranker.py ``_forward``) with a head of
    n_tasks = 2 outputs (PairRM has 1): our loader reads n_tasks from the RankerConfig."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    state = dict(pairrm_dirs["state"])
    hidden = state["head_layer.4.weight"].shape[1]
    state["head_layer.4.weight"] = torch.randn(2, hidden) * 0.5
    state["head_layer.4.bias"] = torch.randn(2) * 0.5
    meta = json.loads((pairrm_dirs["blender"] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**meta, "n_tasks": 2}))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))

    tok = _blender_tokenizer(pairrm_dirs)
    source, cands = "hello!", ["hi!", "f**k off!"]
    expected = _blender_full_predict(tok, _blender_ranker(pairrm_dirs, state), source, cands)
    np.testing.assert_allclose(_judge(tmp_path).compare(source, cands), expected, rtol=0, atol=_logit_tol(state))
    # ... which is neither task alone
    for task in (0, 1):
        one = {**state, "head_layer.4.weight": state["head_layer.4.weight"][task : task + 1],
               "head_layer.4.bias": state["head_layer.4.bias"][task : task + 1]}
        one_task = _blender_full_predict(tok, _blender_ranker(pairrm_dirs, one), source, cands)
        assert np.abs(one_task - expected).max() > 100 * _logit_tol(state)  # far beyond float32 noise


def test_candidate_budget_is_per_prompt_as_rank_with_batch_size_1(pairrm_dirs):
    """The collator gives candidates ``412 + (1224 - longest source in the batch) // 2`` tokens. The authors
    ranked one prompt per batch, so the budget follows each prompt's own source; ours does the same however
    prompts are batched (a batch of a long and a short prompt would cut the short prompt's candidates)."""
    tok = _blender_tokenizer(pairrm_dirs)
    short, long_source, cands = "hi", "how are you " * 500, ["the sun is light " * 400, "ok"]
    alone = _blender_collate(tok, [short], [cands])
    together = _blender_collate(tok, [short, long_source], [cands, cands])
    scorer = load_pairrm(str(pairrm_dirs["blender"]))
    (ids, *_), _ = scorer.rows([(short, cands[0], cands[1]), (long_source, cands[0], cands[1])])
    n_source, n_long_cand = int(alone[1][0].sum()), int(alone[3][0, 0].sum())
    assert n_long_cand == (2048 - n_source) // 2 > int(together[3][0, 0].sum())
    assert len(ids) == n_source + n_long_cand + int(alone[3][0, 1].sum())
