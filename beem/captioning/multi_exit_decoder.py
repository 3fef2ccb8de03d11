"""A transformer caption decoder with an exit head after every layer, run one layer at a time with a KV cache.

Each layer is pre-LayerNorm: causal self-attention (keys/values cached per layer), cross-attention to the image
features, feed-forward. Exit head i is a LayerNorm of layer i's output followed by the output projection shared
by all exits (tied to the token embedding), so every exit speaks the same vocabulary.

The layer-by-layer API mirrors the classifier's: `embed_tokens` / `embed_next`, `run_layer`, `exit_logits`, and each
layer's `key_value` and `attend` for the step loop of `caption_rows.CaptionRows`, where a token that leaves at
layer i gives the layers it skipped keys and values computed from its layer-i state (DESIGN 3.6, state copying as
in CALM).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional

SUPPRESSED_LOGIT = -1e4


@dataclass(frozen=True)
class DecoderSpec:
    vocab_size: int
    num_layers: int = 6
    hidden_size: int = 256
    num_heads: int = 4
    ffn_size: int = 1024
    max_length: int = 32
    image_feature_size: int = 1280  # EfficientNet-Lite0's channels
    dropout: float = 0.1
    # Tokens no exit may predict (<pad>, <start>): with the output projection tied to the embedding, an untrained
    # or weak decoder would otherwise echo its <start> input.
    suppressed_tokens: tuple[int, ...] = ()

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class LayerCache:
    """Keys and values of the tokens decoded so far, for one layer: each (B, heads, T, head_dim)."""

    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions' keys and values; returns all of them."""
        self.keys = keys if self.keys is None else torch.cat([self.keys, keys], dim=2)
        self.values = values if self.values is None else torch.cat([self.values, values], dim=2)
        return self.keys, self.values

    @property
    def length(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[2])


class DecoderLayer(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.num_heads = spec.num_heads
        self.head_dim = spec.hidden_size // spec.num_heads
        self.self_norm = nn.LayerNorm(spec.hidden_size)
        self.query = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.key = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.value = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.self_out = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.cross_norm = nn.LayerNorm(spec.hidden_size)
        self.cross_query = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.cross_key = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.cross_value = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.cross_out = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.ffn_norm = nn.LayerNorm(spec.hidden_size)
        self.ffn = nn.Sequential(
            nn.Linear(spec.hidden_size, spec.ffn_size), nn.GELU(), nn.Linear(spec.ffn_size, spec.hidden_size)
        )
        self.dropout = nn.Dropout(spec.dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, heads, T, head_dim)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, head_dim) -> (B, T, H)."""
        batch, _, length, _ = x.shape
        return x.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)

    def key_value(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's self-attention keys and values for inputs `hidden` (B, T, H)."""
        normed = self.self_norm(hidden)
        return self._heads(self.key(normed)), self._heads(self.value(normed))

    def image_key_value(self, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of the projected image features (B, P, H): computed once per image."""
        return self._heads(self.cross_key(image_features)), self._heads(self.cross_value(image_features))

    def forward(
        self,
        hidden: torch.Tensor,  # (B, T_new, H): the new positions
        cache: LayerCache,  # the earlier positions' keys and values; the new ones are appended
        image_kv: tuple[torch.Tensor, torch.Tensor],
        causal: bool,
    ) -> torch.Tensor:
        keys, values = cache.append(*self.key_value(hidden))
        # New positions attend to every cached position and causally among themselves (one new position sees all).
        new = hidden.shape[1]
        mask = _causal_mask(new, cache.length, hidden.device) if causal and new > 1 else None
        return self.attend(hidden, keys, values, image_kv, mask)

    def attend(
        self,
        hidden: torch.Tensor,  # (B, T_new, H)
        keys: torch.Tensor,  # (B, heads, T, head_dim), the new positions included
        values: torch.Tensor,
        image_kv: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,  # (T_new, T) or (B, 1, T_new, T) bool, True = may attend
    ) -> torch.Tensor:
        """Self-attention over `keys`/`values`, cross-attention to the image, feed-forward: (B, T_new, H)."""
        query = self._heads(self.query(self.self_norm(hidden)))
        attention = functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
        hidden = hidden + self.dropout(self.self_out(self._merge(attention)))
        cross_query = self._heads(self.cross_query(self.cross_norm(hidden)))
        cross = functional.scaled_dot_product_attention(cross_query, *image_kv)
        hidden = hidden + self.dropout(self.cross_out(self._merge(cross)))
        return hidden + self.dropout(self.ffn(self.ffn_norm(hidden)))


def _causal_mask(new: int, total: int, device: torch.device) -> torch.Tensor:
    """(new, total) bool: new position i (at total - new + i) sees cached positions up to itself."""
    positions = torch.arange(total, device=device)
    return positions[None, :] <= (total - new + torch.arange(new, device=device))[:, None]


class MultiExitDecoder(nn.Module):
    def __init__(self, spec: DecoderSpec) -> None:
        super().__init__()
        self.spec = spec
        self.token_embedding = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.position_embedding = nn.Embedding(spec.max_length, spec.hidden_size)
        self.image_projection = nn.Linear(spec.image_feature_size, spec.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(spec) for _ in range(spec.num_layers))
        self.exit_norms = nn.ModuleList(nn.LayerNorm(spec.hidden_size) for _ in range(spec.num_layers))

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    def layer(self, index: int) -> DecoderLayer:
        layer = self.layers[index]
        assert isinstance(layer, DecoderLayer)
        return layer

    def image_keys_values(self, image_features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(B, P, image_feature_size) -> every layer's cross-attention keys and values."""
        projected = self.image_projection(image_features)
        return [self.layer(index).image_key_value(projected) for index in range(self.num_layers)]

    def embed_tokens(self, tokens: torch.Tensor, first_position: int) -> torch.Tensor:
        """(B, T) token ids at positions first_position.. -> (B, T, H)."""
        positions = torch.arange(first_position, first_position + tokens.shape[1], device=tokens.device)
        return self.token_embedding(tokens) + self.position_embedding(positions)[None]

    def embed_next(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """(R,) token ids, each at its own position (R,) -> (R, 1, H): the rows of a decoding step."""
        return (self.token_embedding(tokens) + self.position_embedding(positions))[:, None, :]

    def run_layer(
        self, index: int, hidden: torch.Tensor, cache: LayerCache, image_kv: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        return self.layer(index)(hidden, cache, image_kv, causal=True)

    def exit_logits(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Exit `index` (0-based): (B, T, H) -> (B, T, vocab), through the embedding-tied output projection.
        Suppressed tokens get SUPPRESSED_LOGIT: probability 0 in fp16 and fp32, and no NaN in an entropy."""
        norm: nn.LayerNorm = self.exit_norms[index]  # type: ignore[assignment]
        logits = norm(hidden) @ self.token_embedding.weight.T
        if self.spec.suppressed_tokens:
            logits[..., list(self.spec.suppressed_tokens)] = SUPPRESSED_LOGIT
        return logits

    def forward_all_exits(self, tokens: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """Teacher forcing for training: (B, T) tokens -> (L, B, T, vocab) logits of every exit."""
        image_kv = self.image_keys_values(image_features)
        hidden = self.embed_tokens(tokens, 0)
        logits = []
        for index in range(self.num_layers):
            hidden = self.run_layer(index, hidden, LayerCache(), image_kv[index])
            logits.append(self.exit_logits(index, hidden))
        return torch.stack(logits)
