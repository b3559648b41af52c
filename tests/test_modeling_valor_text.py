"""The shared text tower: BERT compatibility, encoder/decoder modes, prompt structure and the KV cache."""

import pytest
import torch
from huggingface_hub.errors import StrictDataclassFieldValidationError
from transformers import BertConfig, BertModel

from helpers import ValorTextModelTester
from transformers_valor import ValorTextConfig, ValorTextModel
from transformers_valor.modeling_valor_text import build_self_attention_mask


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
    )
    path = tmp_path_factory.mktemp("bert")
    BertModel(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_tiny_bert_checkpoint_gives_bert_outputs(tiny_bert_dir, attn):
    model, info = ValorTextModel.from_pretrained(
        tiny_bert_dir, attn_implementation=attn, output_loading_info=True
    )
    assert info["unexpected_keys"] == set() or not info["unexpected_keys"]
    assert set(info["missing_keys"]) == {"embeddings.prompt_embedding.weight"}
    bert = BertModel.from_pretrained(tiny_bert_dir, attn_implementation=attn).eval()
    ids, mask = ValorTextModelTester().prepare_inputs()
    expected = bert(ids, attention_mask=mask).last_hidden_state
    got = model.eval()(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)


def test_bert_checkpoint_with_cross_attention_misses_only_new_weights(tiny_bert_dir):
    model, info = ValorTextModel.from_pretrained(
        tiny_bert_dir, add_cross_attention=True, output_loading_info=True
    )
    missing = set(info["missing_keys"])
    assert missing, "the cross-attention weights must be reported as new"
    assert all(".crossattention." in key or key == "embeddings.prompt_embedding.weight" for key in missing)
    assert not info["unexpected_keys"]


def test_bert_base_key_coverage():
    """A BERT-base state dict maps 1:1 onto the VALOR text tower (checked on the meta device: no memory)."""
    with torch.device("meta"):
        bert_keys = set(BertModel(BertConfig()).state_dict())
        valor_keys = set(ValorTextModel(ValorTextConfig()).state_dict())
    bert_keys = {k for k in bert_keys if not k.startswith("pooler.") and "position_ids" not in k}
    assert bert_keys <= valor_keys
    new = valor_keys - bert_keys
    assert all(".crossattention." in k or k == "embeddings.prompt_embedding.weight" for k in new)
    # Per layer: query, key, value, output dense (weight + bias each) and the output LayerNorm (weight + bias).
    assert sum(".crossattention." in k for k in new) == 12 * 10


def test_decoder_is_causal_and_encoder_is_bidirectional():
    tester = ValorTextModelTester(batch_size=1)
    model = ValorTextModel(tester.get_config()).eval()
    ids, _ = tester.prepare_inputs()
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 90 + 5
    video = torch.randn(1, 5, 32)
    dec_a = model(ids, video_states=video, is_decoder=True).last_hidden_state
    dec_b = model(changed, video_states=video, is_decoder=True).last_hidden_state
    torch.testing.assert_close(dec_a[:, :-1], dec_b[:, :-1])
    enc_a = model(ids).last_hidden_state
    enc_b = model(changed).last_hidden_state
    assert not torch.allclose(enc_a[:, 0], enc_b[:, 0])


@pytest.mark.parametrize("layout", ["concat", "parallel", "video_first", "audio_first"])
def test_cross_attention_layouts_use_each_modality(layout):
    model = ValorTextModel(ValorTextModelTester().get_config(cross_attention_layout=layout)).eval()
    ids, mask = ValorTextModelTester().prepare_inputs()
    video, audio = torch.randn(2, 5, 32), torch.randn(2, 3, 32)
    outs = [
        model(ids, mask, video_states=v, audio_states=a, is_decoder=True).last_hidden_state
        for v, a in ((video, None), (None, audio), (video, audio))
    ]
    plain = model(ids, mask, is_decoder=True).last_hidden_state
    for out in outs:
        assert not torch.allclose(out, plain)
    assert not torch.allclose(outs[0], outs[2]) and not torch.allclose(outs[1], outs[2])


def test_prompt_is_seen_by_text_and_does_not_see_text():
    mask = build_self_attention_mask(torch.ones(1, 5), num_prompt_tokens=2, query_start=0, causal=True)[0, 0]
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],  # prompt rows: prompt only
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],  # text rows: prompt + causal text
            [1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    model = ValorTextModel(ValorTextModelTester().get_config()).eval()
    ids, mask = ValorTextModelTester().prepare_inputs()
    prompt = torch.randint(5, 99, (2, 3), generator=torch.Generator().manual_seed(1))
    with_prompt = model(ids, mask, prompt_ids=prompt, is_decoder=True).last_hidden_state
    other_prompt = model(ids, mask, prompt_ids=(prompt + 1) % 90 + 5, is_decoder=True).last_hidden_state
    assert with_prompt.shape == (2, 6, 32)
    assert not torch.allclose(with_prompt, other_prompt)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_incremental_cache_matches_full_sequence(attn):
    config = ValorTextModelTester().get_config()
    config._attn_implementation = attn
    model = ValorTextModel(config).eval()
    ids, _ = ValorTextModelTester().prepare_inputs()
    prompt = torch.randint(5, 99, (2, 3))
    prompt_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    video = torch.randn(2, 5, 32)
    full = model(
        ids, prompt_ids=prompt, prompt_attention_mask=prompt_mask, video_states=video, is_decoder=True
    )
    first = model(
        ids[:, :3],
        prompt_ids=prompt,
        prompt_attention_mask=prompt_mask,
        video_states=video,
        is_decoder=True,
        use_cache=True,
    )
    steps = [first.last_hidden_state]
    cache = first.cache
    for i in range(3, ids.shape[1]):
        out = model(
            ids[:, i : i + 1],
            attention_mask=torch.ones(2, i + 1),
            prompt_attention_mask=prompt_mask,
            video_states=video,
            is_decoder=True,
            cache=cache,
            use_cache=True,
        )
        steps.append(out.last_hidden_state)
        cache = out.cache
    torch.testing.assert_close(torch.cat(steps, 1), full.last_hidden_state, atol=1e-5, rtol=1e-5)


def test_eager_and_sdpa_agree():
    config = ValorTextModelTester().get_config()
    eager = ValorTextModel(config).eval()
    sdpa_config = ValorTextModelTester().get_config()
    sdpa_config._attn_implementation = "sdpa"
    sdpa = ValorTextModel(sdpa_config).eval()
    sdpa.load_state_dict(eager.state_dict())
    ids, mask = ValorTextModelTester().prepare_inputs()
    video = torch.randn(2, 5, 32)
    for kwargs in ({}, {"video_states": video, "is_decoder": True}):
        a = eager(ids, mask, **kwargs).last_hidden_state
        b = sdpa(ids, mask, **kwargs).last_hidden_state
        torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=1e-5)


def test_hidden_states_and_tuple_output():
    model = ValorTextModel(ValorTextModelTester().get_config()).eval()
    ids, mask = ValorTextModelTester().prepare_inputs()
    out = model(ids, mask, output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape == (2, 6, 32)
    assert isinstance(model(ids, mask, return_dict=False), tuple)


def test_bad_inputs():
    model = ValorTextModel(ValorTextModelTester().get_config())
    ids, mask = ValorTextModelTester().prepare_inputs()
    with pytest.raises(ValueError, match="exactly one"):
        model()
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, mask[:, :3])
    with pytest.raises(StrictDataclassFieldValidationError, match="cross_attention_layout"):
        ValorTextConfig(cross_attention_layout="sideways")
