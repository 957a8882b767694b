"""Native PairRM: strict loading of both checkpoint layouts, the input format, the head arithmetic,
order debiasing, batching, truncation and the full-size key layout (on the meta device)."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest

torch = pytest.importorskip("torch")

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
    assert m[0, 1] == pytest.approx(_reference_logit(pairrm_dirs, "hello!", "hi!", "f**k off!"), abs=1e-5)
    assert m[1, 0] == pytest.approx(_reference_logit(pairrm_dirs, "hello!", "f**k off!", "hi!"), abs=1e-5)
    assert abs(m[0, 1]) > 1e-3


def test_all_layouts_give_the_same_logits(pairrm_dirs):
    prompt, cands = "I love you!", ["I hate you!", "I love you, too!", "why is the sky blue"]
    ref = _judge(pairrm_dirs["blender"]).compare(prompt, cands)
    for layout in ("blender_bin", "hf"):
        np.testing.assert_allclose(_judge(pairrm_dirs[layout]).compare(prompt, cands), ref, atol=1e-6)


def test_swapping_candidates_flips_the_debiased_logit(pairrm_dirs):
    judge = _judge(pairrm_dirs["hf"])
    a, b, c = "the sun is light", "hi, how are you", "blue because of light"
    m = judge.compare("why is the sky blue?", [a, b, c])
    m_swapped = judge.compare("why is the sky blue?", [b, a, c])
    # the same ordered comparisons land in the permuted cells
    assert m_swapped[0, 1] == pytest.approx(m[1, 0], abs=1e-5)
    assert m_swapped[1, 0] == pytest.approx(m[0, 1], abs=1e-5)
    assert m_swapped[0, 2] == pytest.approx(m[1, 2], abs=1e-5)
    debiased, debiased_swapped = debiased_logit(m, 0, 1), debiased_logit(m_swapped, 0, 1)
    assert debiased == pytest.approx((m[0, 1] - m[1, 0]) / 2)
    assert abs(debiased) > 1e-3
    assert debiased_swapped == pytest.approx(-debiased, abs=1e-5)
    # PairRM is position-biased: the raw logit is not antisymmetric
    assert m[0, 1] != pytest.approx(-m[1, 0], abs=1e-4)


def test_batched_scoring_equals_one_pair_at_a_time(pairrm_dirs):
    prompts = ["hello!", "why is the sky blue? " * 3]
    cands = [["hi!", "f**k off!", "hello, how are you? I love you"],
             ["because of the sun", "blue light", "the sky is blue because light of the sun is scattered", "hi"]]
    batched = _judge(pairrm_dirs["hf"], batch_size=64).compare_many(prompts, cands)
    single = _judge(pairrm_dirs["hf"], batch_size=1).compare_many(prompts, cands)
    per_prompt = [_judge(pairrm_dirs["hf"], batch_size=3).compare(p, c) for p, c in zip(prompts, cands)]
    for b, s, p in zip(batched, single, per_prompt):
        assert b.shape == s.shape
        np.testing.assert_allclose(b, s, atol=1e-5)
        np.testing.assert_allclose(b, p, atol=1e-5)


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
    assert logit == pytest.approx(_reference_logit(pairrm_dirs, long_source, "hi " * 1000, "love " * 1000), abs=1e-4)


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
