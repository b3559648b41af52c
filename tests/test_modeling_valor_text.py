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
    prompt = torch.tensor([[1, 11, 12, 2], [1, 21, 2, 0]])  # padded: its mask comes from `prompt != pad`
    for kwargs in (
        {},
        {"video_states": video, "is_decoder": True},
        {"prompt_ids": prompt},
        {"prompt_ids": prompt, "video_states": video},
        {"prompt_ids": prompt, "video_states": video, "is_decoder": True},
    ):
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


def test_token_ids_and_positions_beyond_the_embeddings_are_named():
    config = ValorTextModelTester().get_config()
    model = ValorTextModel(config).eval()
    ids, mask = ValorTextModelTester().prepare_inputs()
    with pytest.raises(
        ValueError,
        match=rf"`input_ids` hold token id {config.vocab_size}, .*vocab_size = {config.vocab_size}",
    ):
        model(ids.masked_fill(ids == ids[0, 1], config.vocab_size), mask)
    with pytest.raises(ValueError, match=r"`prompt_ids` hold token id -1"):
        model(ids, mask, prompt_ids=torch.full((2, 3), -1))
    too_long = torch.ones((1, config.max_position_embeddings + 1), dtype=torch.long)
    with pytest.raises(
        ValueError,
        match=rf"{config.max_position_embeddings + 1} text positions.*max_position_embeddings = {config.max_position_embeddings}",
    ):
        model(too_long)


# ----------------------------------------------------------------------------------- prompt attention rule
def reference_layout_mask(text_valid, prompt_valid, causal):
    """The self-attention mask as the reference's `model/bert.py` builds it, in ITS layout `[text ; prompt]`:
    the key mask expanded to every row, then, for a causal call only, `tril` over the text block and the prompt
    rows cut off from the text columns. Built position by position."""
    batch, length = text_valid.shape
    keys = torch.cat([text_valid, prompt_valid], dim=1).bool()
    total = keys.shape[1]
    mask = torch.zeros(batch, total, total, dtype=torch.bool)
    for b in range(batch):
        for q in range(total):
            for k in range(total):
                allowed = bool(keys[b, k])
                if causal and k < length and (q >= length or k > q):
                    allowed = False
                mask[b, q, k] = allowed
    return mask


def to_prompt_first(mask, length):
    """Reorder a `[text ; prompt]` mask into this project's internal `[prompt ; text]` order."""
    total = mask.shape[-1]
    order = torch.cat([torch.arange(length, total), torch.arange(length)])
    return mask[:, order][:, :, order]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("num_prompt", [0, 3])
def test_self_attention_mask_matches_the_reference_rule(causal, num_prompt):
    text_valid = torch.ones(3, 5, dtype=torch.long)
    text_valid[1, 3:] = 0
    text_valid[2, 4:] = 0
    prompt_valid = torch.ones(3, num_prompt, dtype=torch.long)
    if num_prompt:
        prompt_valid[2, -1] = 0
    expected = to_prompt_first(reference_layout_mask(text_valid, prompt_valid, causal), 5)
    key_padding = torch.cat([prompt_valid, text_valid], dim=1)
    for query_start in (0, num_prompt + 2):  # a full call, and the queries of a cached call
        got = build_self_attention_mask(key_padding, num_prompt, query_start, causal)[:, 0]
        want = expected[:, query_start:]
        valid_rows = key_padding[:, query_start:].bool()  # rows of padding queries are never read
        assert torch.equal(got[valid_rows], want[valid_rows])


def test_prompt_sees_the_text_only_in_bidirectional_calls():
    """Encoder (and MLM): prompt and text all see each other. Decoder: the prompt is cut off from the text."""
    mask = build_self_attention_mask(torch.ones(1, 5), num_prompt_tokens=2, query_start=0, causal=False)[0, 0]
    assert mask.all()
    causal = build_self_attention_mask(torch.ones(1, 5), num_prompt_tokens=2, query_start=0, causal=True)[
        0, 0
    ]
    assert not causal[:2, 2:].any() and causal[2:, :2].all()


def _bert_encoder_with_appended_prompt(model, ids, mask, prompt, prompt_mask):
    """transformers' BertModel encoder, with this tower's weights, over `[text ; prompt]` in the reference's order
    and positions (text 0..L-1, prompt 0..P-1 with the prompt type embedding), every valid token seeing all."""
    config = model.config
    bert = BertModel(
        BertConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            max_position_embeddings=config.max_position_embeddings,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            layer_norm_eps=config.layer_norm_eps,
        ),
        add_pooling_layer=False,
    ).eval()
    state = {
        k: v
        for k, v in model.state_dict().items()
        if "crossattention" not in k and "prompt_embedding" not in k
    }
    bert.load_state_dict(state, strict=True)
    emb = bert.embeddings
    prompt_states = emb.LayerNorm(
        emb.word_embeddings(prompt)
        + emb.position_embeddings.weight[: prompt.shape[1]]
        + model.embeddings.prompt_embedding.weight[0]
    )
    hidden = torch.cat([emb(input_ids=ids), prompt_states], dim=1)
    keys = torch.cat([mask, prompt_mask], dim=1)
    additive = (1.0 - keys[:, None, None, :].float()) * torch.finfo(torch.float32).min
    return bert.encoder(hidden, attention_mask=additive).last_hidden_state[:, : ids.shape[1]]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_encoder_with_prompt_equals_the_reference_layout(attn):
    """The prompt placed first internally gives the reference's outputs of the prompt appended after the text."""
    config = ValorTextModelTester().get_config()
    config._attn_implementation = attn
    torch.manual_seed(0)
    model = ValorTextModel(config).eval()
    ids, mask = ValorTextModelTester().prepare_inputs()
    prompt = torch.tensor([[1, 11, 12, 13, 2], [1, 21, 22, 2, 0]])
    prompt_mask = (prompt != 0).long()
    got = model(ids, mask, prompt_ids=prompt).last_hidden_state  # the mask comes from `prompt != pad`
    with torch.no_grad():
        expected = _bert_encoder_with_appended_prompt(model, ids, mask, prompt, prompt_mask)
    valid = mask.bool()
    torch.testing.assert_close(got[valid], expected[valid], atol=1e-5, rtol=1e-5)
    without = model(ids, mask).last_hidden_state
    assert not torch.allclose(got[valid], without[valid], atol=1e-3)
