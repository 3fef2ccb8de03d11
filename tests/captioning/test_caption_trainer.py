"""Two-stage captioner training on cached features: it learns, and stage 2 leaves the backbone alone."""

from __future__ import annotations

import torch

from beem.captioning.caption_trainer import CaptionTrainingConfig, train_captioner
from beem.captioning.multi_exit_decoder import DecoderSpec, MultiExitDecoder


def test_stage_one_learns_and_stage_two_trains_only_the_early_exit_heads() -> None:
    torch.manual_seed(0)
    spec = DecoderSpec(vocab_size=12, num_layers=3, hidden_size=32, num_heads=2, ffn_size=64, max_length=8,
                       image_feature_size=6, dropout=0.0)  # fmt: skip
    decoder = MultiExitDecoder(spec)
    # The caption is a function of the image: feature 0 decides between two token sequences.
    features = torch.randn(64, 4, 6)
    rows = [[1, 4, 5, 6, 2] if float(f[0, 0]) > 0 else [1, 7, 8, 9, 2] for f in features]
    stage_one = CaptionTrainingConfig(backbone_epochs=25, exit_epochs=0, batch_size=16, learning_rate=3e-3)
    before = {name: p.detach().clone() for name, p in decoder.named_parameters()}
    losses = train_captioner(decoder, features, rows, pad_id=0, config=stage_one)
    assert losses["backbone_losses"][-1] < 0.5 * losses["backbone_losses"][0]
    assert not torch.equal(before["layers.0.query.weight"], decoder.layers[0].query.weight)
    after_stage_one = {name: p.detach().clone() for name, p in decoder.named_parameters()}

    stage_two = CaptionTrainingConfig(backbone_epochs=0, exit_epochs=3, batch_size=16)
    train_captioner(decoder, features, rows, pad_id=0, config=stage_two)
    for name, parameter in decoder.named_parameters():
        changed_in_stage_two = not torch.equal(parameter, after_stage_one[name])
        is_early_head = name.startswith(("exit_norms.0.", "exit_norms.1."))
        assert changed_in_stage_two == is_early_head, name
