"""A caption row: a decoded, resized image with its exit policy."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from service.engine.queued_row import QueuedRow


@dataclass(eq=False, kw_only=True)
class ImageRow(QueuedRow):
    """A decoded, resized image to caption with its exit policy. An image is one unit of the token budget: its
    cost does not depend on its file size."""

    image: torch.Tensor  # (3, 224, 224) in [-1, 1]
