"""Run a BERT-family encoder one layer at a time.

Training, calibration and serving all walk the encoder through this adapter, so the three see the same numbers.
The recipe (embeddings -> transformers' bidirectional mask -> each layer module) was checked bit-exact against
`output_hidden_states`. MPNet additionally needs its relative position bias, computed once per batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.masking_utils import create_bidirectional_mask

# Model types whose encoder is `encoder.layer[i](hidden, attention_mask)`; MPNet adds a position bias.
SUPPORTED_MODEL_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert", "mpnet")


@dataclass(frozen=True)
class EncoderState:
    """Where a batch is between layers. Every tensor's first dimension is the batch row."""

    hidden: torch.Tensor  # (B, T, H) output of the last layer run (the embeddings before layer 1)
    attention_mask: torch.Tensor  # (B, T) 1 for a token, 0 for padding
    layer_mask: torch.Tensor | None  # the mask the layer modules take: (B, 1, T, T) / (B, 1, 1, T), or None
    position_bias: torch.Tensor | None  # MPNet only: (B, heads, T, T)
    layers_done: int  # how many encoder layers `hidden` has passed through
    # Mean pooling's token weights (B, T, 1) and counts (B, 1), the same at every layer: computed once per batch
    # (`pool_hidden` with them is op for op what it computes without them).
    pool_weights: tuple[torch.Tensor, torch.Tensor] | None = None

    def select_rows(self, rows: torch.Tensor) -> EncoderState:
        """Keep only `rows` (a 1-D index tensor): how the engine drops samples that have exited."""
        weights = self.pool_weights
        return replace(
            self,
            hidden=self.hidden.index_select(0, rows),
            attention_mask=self.attention_mask.index_select(0, rows),
            layer_mask=_select_or_keep(self.layer_mask, rows),
            position_bias=_select_or_keep(self.position_bias, rows),
            pool_weights=None if weights is None else (weights[0][rows], weights[1][rows]),
        )


def mean_pool_weights(attention_mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) mask -> token weights (B, T, 1) and their clamped counts (B, 1), as mean pooling divides by them."""
    weights = attention_mask.to(dtype).unsqueeze(-1)
    return weights, weights.sum(dim=1).clamp(min=1.0)


def _select_or_keep(tensor: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    # A mask broadcast over the batch (first dimension 1) applies to any subset unchanged.
    if tensor is None or tensor.shape[0] == 1:
        return tensor
    return tensor.index_select(0, rows)


class LayerwiseBackbone(nn.Module):
    """Wraps a transformers encoder (`PreTrainedModel` with `.embeddings` and `.encoder.layer`)."""

    def __init__(self, encoder_model: PreTrainedModel) -> None:
        super().__init__()
        model_type = encoder_model.config.model_type
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"backbone model_type {model_type!r} is not supported; expected one of {SUPPORTED_MODEL_TYPES}"
            )
        # Typed as Any: transformers' submodules (embeddings, encoder.layer) are dynamic attributes.
        model: Any = encoder_model
        self.model = model
        self.uses_position_bias = model_type == "mpnet"
        embeddings_forward = inspect.signature(model.embeddings.forward).parameters
        self.takes_token_types = "token_type_ids" in embeddings_forward
        # ELECTRA-small projects embeddings up to the hidden size before layer 1.
        self.embeddings_project: nn.Module | None = getattr(encoder_model, "embeddings_project", None)

    @staticmethod
    def _unchunked_feed_forward(layer: Any) -> bool:
        """A BERT-style encoder layer (self-attention, then `feed_forward_chunk`) with chunking off, in eval."""
        return (not layer.training and getattr(layer, "chunk_size_feed_forward", None) == 0
                and hasattr(layer, "feed_forward_chunk") and not getattr(layer, "is_decoder", False))  # fmt: skip

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.layer)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, T)
        token_type_ids: torch.Tensor | None = None,  # (B, T)
    ) -> EncoderState:
        return self.regroup(self.embed_hidden(input_ids, token_type_ids), attention_mask, layers_done=0)

    def embed_hidden(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, H) input of layer 1."""
        if self.takes_token_types and token_type_ids is not None:
            hidden = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        else:
            hidden = self.model.embeddings(input_ids=input_ids)
        if self.embeddings_project is not None:
            hidden = self.embeddings_project(hidden)
        result: torch.Tensor = hidden
        return result

    def sync_free_layer_mask(self, attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | Any:
        """The layer mask `regroup` builds, from (B, T) padding, without reading anything back to the host:
        transformers' builder asks the device whether anything is padded (to return None), a sync that a CUDA
        graph cannot hold. For sdpa (these encoders' default) the mask is (B, 1, T, T) bool, True where a token
        may attend, as transformers builds it; other attention kinds get transformers' mask, always materialised."""
        if self.model.config._attn_implementation == "sdpa":
            rows, tokens = attention_mask.shape
            return attention_mask.bool()[:, None, None, :].expand(rows, 1, tokens, tokens)
        hidden_like = torch.empty((*attention_mask.shape, 1), dtype=dtype, device=attention_mask.device)
        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden_like,
                                         attention_mask=attention_mask, allow_is_bidirectional_skip=False)  # fmt: skip

    def position_bias_for(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """MPNet's relative position bias for (B, T, H) rows; None for the other encoders."""
        if not self.uses_position_bias:
            return None
        bias: torch.Tensor = self.model.encoder.compute_position_bias(hidden)
        return bias

    def regroup(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layers_done: int) -> EncoderState:
        """The state of rows `hidden` (B, T, H) with padding `attention_mask` (B, T) after `layers_done` layers:
        the layer mask (None when nothing is padded) and MPNet's position bias are rebuilt for this (B, T), so
        rows from different batches can be merged, re-padded or trimmed between layers."""
        layer_mask: Any = create_bidirectional_mask(
            config=self.model.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        return EncoderState(hidden, attention_mask, layer_mask, self.position_bias_for(hidden), layers_done,
                            mean_pool_weights(attention_mask, hidden.dtype))  # fmt: skip

    def run_layer(self, state: EncoderState) -> EncoderState:
        """Run the next encoder layer (layer `state.layers_done + 1`, 1-based) on every row of the batch."""
        hidden = self.forward_layer(state.layers_done, state.hidden, state.layer_mask, state.position_bias)
        return replace(state, hidden=hidden, layers_done=state.layers_done + 1)

    def forward_layer(
        self, index: int, hidden: torch.Tensor, layer_mask: Any, position_bias: torch.Tensor | None
    ) -> torch.Tensor:
        """Layer `index` (0-based) on (B, T, H) rows with their layer mask: (B, T, H)."""
        layer = self.model.encoder.layer[index]
        if self.uses_position_bias:
            output = layer(hidden, layer_mask, position_bias)
        elif self._unchunked_feed_forward(layer):
            # What the layer's own forward does with chunking off, minus `apply_chunking_to_forward`, which calls
            # `inspect.signature` on every call (tens of microseconds per layer at batch 1; bit-identical output).
            attention_output = layer.attention(hidden, layer_mask)[0]
            output = layer.feed_forward_chunk(attention_output)
        else:
            output = layer(hidden, attention_mask=layer_mask)
        result: torch.Tensor = output[0] if isinstance(output, tuple) else output
        return result
