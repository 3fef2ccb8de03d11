"""Caption vocabulary round trips and the two-stage losses' gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from beem.captioning.caption_losses import exit_heads_loss, final_exit_loss
from beem.captioning.caption_vocabulary import CaptionVocabulary

CAPTIONS = [
    "a small red dress at the top left",
    "a large blue bag at the top right and a small red coat at the bottom left",
]


def test_vocabulary_round_trip(tmp_path: Path) -> None:
    vocabulary = CaptionVocabulary.from_captions(CAPTIONS)
    assert vocabulary.words[:4] == ("<pad>", "<start>", "<end>", "<unk>")
    for caption in CAPTIONS:
        tokens = vocabulary.encode(caption)
        assert tokens[0] == vocabulary.start_id and tokens[-1] == vocabulary.end_id
        assert vocabulary.decode(tokens[1:]) == caption
    vocabulary.save(tmp_path / "vocabulary.json")
    assert CaptionVocabulary.load(tmp_path / "vocabulary.json") == vocabulary


def test_unknown_words_and_commas() -> None:
    vocabulary = CaptionVocabulary.from_captions(["a red dress, a blue bag"])
    tokens = vocabulary.encode("a green dress, a blue bag")
    assert tokens[2] == 3  # "green" is unknown
    assert vocabulary.decode(tokens[1:]) == "a dress, a blue bag"  # unknown words are dropped when decoding


def test_stage_losses_route_gradients_as_designed() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 4, 7, requires_grad=True)  # (L, B, T, V)
    targets = torch.tensor([[4, 5, 2, 0], [6, 2, 0, 0]])  # 0 = padding
    (final_grad,) = torch.autograd.grad(final_exit_loss(logits, targets, pad_id=0), logits)
    assert final_grad[:-1].abs().sum() == 0 and final_grad[-1].abs().sum() > 0
    assert final_grad[-1, 0, 3].abs().sum() == 0  # padding positions carry no loss
    (exit_grad,) = torch.autograd.grad(exit_heads_loss(logits, targets, pad_id=0), logits)
    assert exit_grad[-1].abs().sum() == 0, "the final exit is the teacher: detached"
    assert exit_grad[0].abs().sum() > 0 and exit_grad[1].abs().sum() > 0


@pytest.mark.parametrize("agree", [True, False])
def test_kl_term_vanishes_when_an_exit_copies_the_final_layer(agree: bool) -> None:
    torch.manual_seed(1)
    final = torch.randn(1, 1, 3, 5)
    early = final.clone() if agree else torch.randn(1, 1, 3, 5)
    targets = torch.tensor([[1, 2, 3]])
    loss = exit_heads_loss(torch.cat([early, final]), targets, pad_id=0)
    cross_entropy = torch.nn.functional.cross_entropy(early[0, 0], targets[0])
    assert (float(loss) == pytest.approx(0.5 * float(cross_entropy), rel=1e-5)) is agree
