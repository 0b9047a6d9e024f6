"""MiniGPT-4 as one `nn.Module` built from Hugging Face parts (both official variants).

- ``variant="qformer"`` (Vicuna-v0): EVA ViT-g (`Blip2VisionModel`, its ``post_layernorm`` plays ``ln_vision``)
  -> Q-Former with ``num_query_tokens`` learned queries -> ``llama_proj`` -> LLaMA. 32 image tokens at full size.
- ``variant="patch"`` (LLaMA-2): ViT -> drop CLS -> group ``patches_per_token`` raster-consecutive patches into one
  token (``view(B, N/4, 4*d_vision)``) -> ``llama_proj`` -> LLaMA. 64 image tokens at full size.

Module paths follow TransformerLens-style naming in docs: the FFN neuron site of layer ``l`` is
``language_model.model.layers[l].mlp.down_proj`` and its *input* ``SiLU(gate(x)) * up(x)`` ``[batch, pos, d_ff]``
is the neuron activation ``O^l``.

``llama_proj`` is ``projection``: ``"linear"`` (official MiniGPT-4: one ``nn.Linear``, keys ``llama_proj.weight``
/ ``.bias``) or ``"mlp2x_gelu"`` (LLaVA-1.5 style ``Linear -> GELU -> Linear``, keys ``llama_proj.0.*`` and
``llama_proj.2.*``), see `build_projection`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

import torch
from torch import nn
from transformers import (
    Blip2QFormerConfig,
    Blip2QFormerModel,
    Blip2VisionConfig,
    Blip2VisionModel,
    LlamaConfig,
    LlamaForCausalLM,
)

Variant = Literal["qformer", "patch"]
#: the projection kinds `build_projection` makes (``MiniGPT4Config.projection``)
PROJECTIONS = ("linear", "mlp2x_gelu")


def build_projection(kind: str, d_in: int, d_out: int) -> nn.Module:
    """``llama_proj`` of kind ``kind``: ``[..., d_in] -> [..., d_out]``.

    ``linear``: ``nn.Linear(d_in, d_out)``; ``mlp2x_gelu``: ``Linear(d_in, d_out) -> GELU -> Linear(d_out, d_out)``
    (an ``nn.Sequential``, as LLaVA-1.5's ``mm_projector``). Unknown kind: `ValueError`.
    """
    if kind == "linear":
        return nn.Linear(d_in, d_out)
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(d_in, d_out), nn.GELU(), nn.Linear(d_out, d_out))
    raise ValueError(f"unknown projection {kind!r} ({' | '.join(PROJECTIONS)})")


def projection_dtype(projection: nn.Module) -> torch.dtype:
    """The dtype of a projection's first weight (what its input is cast to)."""
    return next(projection.parameters()).dtype


def _side(value: int | list[int] | tuple[int, int]) -> int:
    """A square size from a Hugging Face vision config field (an int, or ``[height, width]``)."""
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


@dataclass
class MiniGPT4Config:
    """Architecture of a MiniGPT-4 (sizes only; prompt and tokenizer live in `ModelSpec`).

    ``vision``/``qformer``/``llm`` are keyword dicts for `Blip2VisionConfig`, `Blip2QFormerConfig` and
    `LlamaConfig`. ``llm`` may be None when the language model is loaded from elsewhere (``ModelSpec.llm_path``).
    ``projection``: the kind of ``llama_proj`` (`PROJECTIONS`).
    """

    variant: Variant = "qformer"
    vision: dict[str, Any] = field(default_factory=dict)
    qformer: dict[str, Any] | None = None
    num_query_tokens: int = 32
    llm: dict[str, Any] | None = None
    patches_per_token: int = 4
    ln_vision_eps: float = 1e-5
    projection: str = "linear"

    def vision_config(self) -> Blip2VisionConfig:
        return Blip2VisionConfig(**self.vision)

    def qformer_config(self) -> Blip2QFormerConfig:
        if self.qformer is None:
            raise ValueError("the patch variant has no Q-Former")
        return Blip2QFormerConfig(**self.qformer)

    def llm_config(self) -> LlamaConfig:
        if self.llm is None:
            raise ValueError("no LLM config: load the language model from its folder")
        return LlamaConfig(**self.llm)

    @property
    def image_size(self) -> int:
        return _side(self.vision_config().image_size)

    @property
    def n_patches(self) -> int:
        vc = self.vision_config()
        return (_side(vc.image_size) // _side(vc.patch_size)) ** 2

    @property
    def n_image_tokens(self) -> int:
        """Number of image tokens the LLM sees: queries (Q-Former) or grouped patches."""
        if self.variant == "qformer":
            return self.num_query_tokens
        return self.n_patches // self.patches_per_token

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MiniGPT4Config:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class MiniGPT4(nn.Module):
    """MiniGPT-4 forward/generate over ``[prefix tokens, image tokens, suffix tokens, (target tokens)]``.

    Every row of a batch shares the same prompt (``ids_before``/``ids_after``), so image tokens sit at the same
    positions ``[len(ids_before), len(ids_before) + n_image_tokens)`` in every row and no padding is needed.
    """

    def __init__(self, config: MiniGPT4Config, language_model: LlamaForCausalLM | None = None) -> None:
        super().__init__()
        self.config = config
        vcfg = config.vision_config()
        self.vision_model = Blip2VisionModel(vcfg)
        self.vision_model.post_layernorm.eps = config.ln_vision_eps  # ln_vision uses LayerNorm's default eps
        if config.variant == "qformer":
            qcfg = config.qformer_config()
            self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qcfg.hidden_size))
            self.qformer = Blip2QFormerModel(qcfg)
            proj_in = qcfg.hidden_size
        elif config.variant == "patch":
            if config.n_patches % config.patches_per_token:
                raise ValueError(f"{config.n_patches} patches do not group by {config.patches_per_token}")
            proj_in = vcfg.hidden_size * config.patches_per_token
        else:
            raise ValueError(f"unknown MiniGPT-4 variant {config.variant!r} (qformer | patch)")
        self.language_model = language_model if language_model is not None else LlamaForCausalLM(config.llm_config())
        self.llama_proj = build_projection(config.projection, proj_in, self.language_model.config.hidden_size)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [B, 3, H, W]`` -> the features ``llama_proj`` reads, ``[B, n_image_tokens, d_in]``."""
        dtype = self.vision_model.embeddings.patch_embedding.weight.dtype
        image_embeds = self.vision_model(pixel_values=pixel_values.to(dtype)).last_hidden_state  # [B, 1+N, d_v]
        return self.connect(image_embeds)

    def connect(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """ViT output ``[B, 1+N, d_v]`` (CLS first) -> Q-Former queries ``[B, Q, d_q]`` or grouped patches
        ``[B, N/k, k*d_v]``."""
        if self.config.variant == "qformer":
            queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
            mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
            out: torch.Tensor = self.qformer(
                query_embeds=queries.to(self.qformer.layernorm.weight.dtype),
                encoder_hidden_states=image_embeds.to(self.qformer.layernorm.weight.dtype),
                encoder_attention_mask=mask,
            ).last_hidden_state  # [B, Q, d_q]
            return out
        patches = image_embeds[:, 1:, :]  # drop CLS: [B, N, d_v]
        b, n, d = patches.shape
        k = self.config.patches_per_token
        return patches.reshape(b, n // k, d * k)  # raster-consecutive patches grouped: [B, N/k, k*d_v]

    # ------------------------------------------------------------------ image -> LLM embeddings
    def encode_img(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``pixel_values [B, 3, H, W]`` -> image token embeddings ``[B, n_image_tokens, d_model]``."""
        tokens = self.image_features(pixel_values)
        return cast("torch.Tensor", self.llama_proj(tokens.to(projection_dtype(self.llama_proj))))

    def embed(
        self,
        pixel_values: torch.Tensor,
        ids_before: torch.Tensor,
        ids_after: torch.Tensor,
        target_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Concatenate ``[E(ids_before), image tokens, E(ids_after), E(target_ids)]`` -> ``[B, T, d_model]``.

        ``ids_before``/``ids_after``: ``[n]`` or ``[B, n]`` prompt segments (BOS already in ``ids_before``);
        ``target_ids``: optional ``[B, T_target]`` teacher-forced answer tokens.
        """
        image = self.encode_img(pixel_values)
        b = image.shape[0]
        embed_tokens = self.language_model.get_input_embeddings()

        def rows(ids: torch.Tensor) -> torch.Tensor:
            ids = ids.to(image.device)
            return cast("torch.Tensor", embed_tokens(ids if ids.dim() == 2 else ids.unsqueeze(0).expand(b, -1)))

        parts = [rows(ids_before), image.to(cast(torch.Tensor, embed_tokens.weight).dtype), rows(ids_after)]
        if target_ids is not None and target_ids.shape[-1] > 0:
            parts.append(rows(target_ids))
        return torch.cat(parts, dim=1)

    def forward(
        self,
        pixel_values: torch.Tensor,
        ids_before: torch.Tensor,
        ids_after: torch.Tensor,
        target_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> Any:
        """Teacher-forced forward; returns the LLM's ``CausalLMOutputWithPast`` (``logits [B, T, V]``)."""
        embeds = self.embed(pixel_values, ids_before, ids_after, target_ids)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return self.language_model(inputs_embeds=embeds, attention_mask=mask, labels=labels)

    @torch.no_grad()
    def generate(
        self, pixel_values: torch.Tensor, ids_before: torch.Tensor, ids_after: torch.Tensor, **generate_kwargs: Any
    ) -> torch.Tensor:
        """Caption: returns the **new** tokens only, ``[B, T_new]`` (HF generate with ``inputs_embeds``)."""
        embeds = self.embed(pixel_values, ids_before, ids_after)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        out = self.language_model.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)
        return cast("torch.Tensor", out)
