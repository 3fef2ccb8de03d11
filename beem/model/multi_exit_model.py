"""The multi-exit classifier: a layer-by-layer encoder plus one exit head per layer.

The lifecycle every caller uses is `embed` -> (`run_layer` -> `exit_logits`) per layer. Nothing here decides
whether a sample exits: that is the exit policies' job (`beem.policies`), so the same model serves training
(every exit), calibration (every exit, cached) and the server (stops rows as the policy says).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.initialization import no_init_weights

from beem.model.exit_heads import ExitHeads, ExitHeadSpec
from beem.model.layerwise_backbone import EncoderState, LayerwiseBackbone


class MultiExitModel(nn.Module):
    def __init__(self, encoder_model: PreTrainedModel, head_spec: ExitHeadSpec) -> None:
        super().__init__()
        self.backbone = LayerwiseBackbone(encoder_model)
        if head_spec.num_layers != self.backbone.num_layers or head_spec.hidden_size != self.backbone.hidden_size:
            raise ValueError(
                f"exit heads for {head_spec.num_layers} layers of width {head_spec.hidden_size} do not fit a "
                f"backbone of {self.backbone.num_layers} layers of width {self.backbone.hidden_size}"
            )
        self.heads = ExitHeads(head_spec)

    @classmethod
    def from_pretrained_backbone(
        cls,
        backbone_dir: str,
        num_labels: int,
        pooling: str,
        shared_pooler: bool,
        dropout: float = 0.1,
        head_design: str = "pooler",
    ) -> MultiExitModel:
        """A fresh multi-exit model on a pre-trained encoder from a local directory (never a hub id)."""
        encoder = AutoModel.from_pretrained(backbone_dir, local_files_only=True)
        spec = ExitHeadSpec(
            num_layers=encoder.config.num_hidden_layers,
            hidden_size=encoder.config.hidden_size,
            num_labels=num_labels,
            pooling=pooling,
            shared_pooler=shared_pooler,
            dropout=dropout,
            design=head_design,
        )
        model = cls(encoder, spec)
        pretrained_pooler = getattr(encoder, "pooler", None)
        if pretrained_pooler is not None and isinstance(getattr(pretrained_pooler, "dense", None), nn.Linear):
            model.heads.init_poolers_from(pretrained_pooler.dense)
        # The exit heads carry their own poolers; the encoder's is never run, so drop it from the weights.
        encoder.pooler = None
        return model

    @classmethod
    def from_config(cls, backbone_config: dict[str, object], head_spec: ExitHeadSpec) -> MultiExitModel:
        """An uninitialised model of the bundle's shape; the bundle reader then loads its weights (and refuses a
        bundle whose weights miss any parameter, so nothing uninitialised is ever served).

        Weights are not initialised: random initialisation was 70% of loading a bundle (0.39 of 0.55 s for the
        default bundle on the 2-core CPU), which a hot swap spends beside the version serving."""
        model_type = str(backbone_config["model_type"])
        config: PretrainedConfig = AutoConfig.for_model(
            model_type, **{key: value for key, value in backbone_config.items() if key != "model_type"}
        )
        with no_init_weights():
            # No pooler: the exit heads have their own, and an unused pooler would be dead weight in the bundle.
            encoder = AutoModel.from_config(config, add_pooling_layer=False)
            return cls(encoder, head_spec)

    @property
    def num_layers(self) -> int:
        return self.backbone.num_layers

    @property
    def num_labels(self) -> int:
        return self.heads.spec.num_labels

    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> EncoderState:
        return self.backbone.embed(input_ids, attention_mask, token_type_ids)

    def run_layer(self, state: EncoderState) -> EncoderState:
        return self.backbone.run_layer(state)

    def exit_logits(self, state: EncoderState) -> torch.Tensor:
        """Logits of the exit after the layer `state` last ran: (B, num_labels)."""
        if state.layers_done < 1:
            raise ValueError("no layer has run yet: call run_layer before exit_logits")
        result: torch.Tensor = self.heads(state.layers_done - 1, state.hidden, state.attention_mask, state.pool_weights)
        return result

    def all_exit_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Every exit's logits for the whole batch: (L, B, num_labels). Used by training and calibration."""
        state = self.embed(input_ids, attention_mask, token_type_ids)
        per_exit = []
        for _ in range(self.num_layers):
            state = self.run_layer(state)
            per_exit.append(self.exit_logits(state))
        return torch.stack(per_exit)
