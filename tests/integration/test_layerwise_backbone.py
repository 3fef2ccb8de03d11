"""Layer-by-layer execution equals the encoder's own forward, for every supported family shape we can generate."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel, PreTrainedModel, RobertaConfig, RobertaModel

from beem.model.exit_heads import ExitHeadSpec
from beem.model.layerwise_backbone import LayerwiseBackbone
from beem.model.multi_exit_model import MultiExitModel

SMALL = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2, "intermediate_size": 64}


def _bert() -> PreTrainedModel:
    return BertModel(BertConfig(vocab_size=120, **SMALL))


def _roberta() -> PreTrainedModel:
    return RobertaModel(RobertaConfig(vocab_size=120, max_position_embeddings=80, **SMALL))


def _mpnet() -> PreTrainedModel:
    # MPNet (the `large` preset's family) needs its relative position bias in every layer.
    return MPNetModel(MPNetConfig(vocab_size=120, **SMALL))


@pytest.mark.parametrize("make_encoder", [_bert, _roberta, _mpnet], ids=["bert", "roberta", "mpnet"])
def test_layer_by_layer_is_bit_exact_with_the_encoder_forward(make_encoder: object) -> None:
    torch.manual_seed(0)
    encoder = make_encoder().eval()  # type: ignore[operator]
    input_ids = torch.randint(5, 120, (3, 11))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0  # padded rows must still match
    attention_mask[2, 4:] = 0
    backbone = LayerwiseBackbone(encoder)
    with torch.inference_mode():
        reference = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        state = backbone.embed(input_ids, attention_mask)
        for layer in range(backbone.num_layers):
            state = backbone.run_layer(state)
            torch.testing.assert_close(state.hidden, reference.hidden_states[layer + 1], atol=0, rtol=0)


def test_compacting_rows_keeps_their_results() -> None:
    """Dropping exited rows between layers (what the server does) must not change the remaining rows."""
    torch.manual_seed(0)
    model = MultiExitModel(_mpnet(), ExitHeadSpec(num_layers=3, hidden_size=32, num_labels=2)).eval()
    input_ids = torch.randint(5, 120, (4, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[3, 5:] = 0
    with torch.inference_mode():
        full = model.all_exit_logits(input_ids, attention_mask)  # (L, B, C)
        state = model.run_layer(model.embed(input_ids, attention_mask))
        kept = torch.tensor([1, 3])
        state = model.run_layer(state.select_rows(kept))
        torch.testing.assert_close(model.exit_logits(state), full[1, kept])


def test_unsupported_family_is_refused_by_name() -> None:
    from transformers import GPT2Config, GPT2Model

    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        LayerwiseBackbone(GPT2Model(GPT2Config(n_layer=1, n_embd=16, n_head=2)))


def test_large_preset_backbone_loads_and_runs_layer_by_layer() -> None:
    """The `large` preset's 12-layer all-mpnet-base-v2 (optional 404 MB install, see README)."""
    from beem.model.pretrained_backbones import BackboneNotFoundError, resolve_backbone
    from beem.presets import get_preset

    try:
        backbone_dir = resolve_backbone(get_preset("large").backbone)
    except BackboneNotFoundError as error:
        pytest.skip(f"optional large backbone not installed: {error}")
    model = MultiExitModel.from_pretrained_backbone(str(backbone_dir), 2, "mean", shared_pooler=False).eval()
    assert model.num_layers == 12
    input_ids = torch.tensor([[0, 1000, 2000, 3000, 2]])
    with torch.inference_mode():
        logits = model.all_exit_logits(input_ids, torch.ones_like(input_ids))
    assert logits.shape == (12, 1, 2)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("make_encoder", [_bert, _roberta, _mpnet], ids=["bert", "roberta", "mpnet"])
def test_the_sync_free_layer_mask_gives_what_transformers_mask_gives(make_encoder: object) -> None:
    """The GPU path builds the layer mask without asking the device whether anything is padded: the same mask
    as transformers' builder, and the same layer output where that builder returns None (nothing padded)."""
    torch.manual_seed(0)
    backbone = LayerwiseBackbone(make_encoder().eval())  # type: ignore[operator]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    for attention_mask in (mask, torch.ones_like(mask)):
        state = backbone.regroup(torch.randn(3, 5, backbone.hidden_size), attention_mask, 0)
        layer_mask = backbone.sync_free_layer_mask(attention_mask, state.hidden.dtype)
        if state.layer_mask is not None:
            assert torch.equal(layer_mask, state.layer_mask)
        with torch.inference_mode():
            expected = backbone.forward_layer(0, state.hidden, state.layer_mask, state.position_bias)
            got = backbone.forward_layer(0, state.hidden, layer_mask, backbone.position_bias_for(state.hidden))
        assert torch.allclose(got[attention_mask.bool()], expected[attention_mask.bool()], atol=1e-6)
