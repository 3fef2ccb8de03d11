"""The multi-exit captioner: image encoder -> (B, P, C) feature grid -> multi-exit decoder.

The encoder is EfficientNet-Lite0 (pretrained, frozen by default: its 7x7x1280 grid is the decoder's memory) or
any module with a `forward_features` giving (B, C, H, W). Images arrive as (B, 3, 224, 224) normalised with
mean = std = 0.5, as the pretrained weights expect.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from beem.captioning.multi_exit_decoder import MultiExitDecoder

IMAGE_SIZE = 224


def image_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image -> (3, 224, 224) float tensor in [-1, 1].

    The arithmetic is numpy's, single-threaded: the server runs this in request threads, where a torch op would
    start torch's intra-op thread pool in each of them and oversubscribe the cores the engine needs. The values
    are the same IEEE float32 operations either way."""
    resized = image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    scaled = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / np.float32(127.5) - np.float32(1.0)
    return torch.from_numpy(np.ascontiguousarray(scaled))


class MultiExitCaptioner(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: MultiExitDecoder, freeze_encoder: bool = True) -> None:
        super().__init__()
        self.encoder: Any = encoder  # any module with `forward_features` (a dynamic attribute for mypy)
        self.decoder = decoder
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            self.encoder.requires_grad_(False)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> (B, P, C): the encoder's feature grid, one memory slot per cell."""
        if self.freeze_encoder:
            self.encoder.eval()  # frozen means frozen BatchNorm statistics too
            with torch.no_grad():
                grid = self.encoder.forward_features(images)
        else:
            grid = self.encoder.forward_features(images)
        return grid.flatten(2).transpose(1, 2)

    def all_exit_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (B, 3, H, W) images, (B, T) input tokens -> (L, B, T, vocab)."""
        return self.decoder.forward_all_exits(tokens, self.image_features(images))


@torch.inference_mode()
def encode_image_files(captioner: MultiExitCaptioner, paths: list[Path], batch_size: int = 32) -> torch.Tensor:
    """Image files -> (N, P, C) feature grids, in batches (the frozen encoder runs once per image per build)."""
    chunks = []
    for start in tqdm(range(0, len(paths), batch_size), desc="encoding images", leave=False):
        with contextlib.ExitStack() as stack:
            opened = [stack.enter_context(Image.open(path)) for path in paths[start : start + batch_size]]
            images = torch.stack([image_tensor(image) for image in opened])
        chunks.append(captioner.image_features(images))
    return torch.cat(chunks)
