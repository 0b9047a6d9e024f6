"""The interface every model adapter implements (MiniGPT-4 and Hugging Face VLMs alike).

An adapter owns a model, its tokenizer and its prompt, and answers what the engine needs to know: how many
layers and FFN units there are, where the neuron site is, where the image tokens sit and which image regions
they come from (`VLMAdapter.image_regions`, `VLMAdapter.patch_grid`, `VLMAdapter.image_connector`), how to
build inputs (optionally with teacher-forced answer tokens appended), how to caption, and how to decode neurons.

Neuron site (hook name, TransformerLens style): ``blocks.{l}.mlp.down_proj.input`` = ``act(gate(x)) * up(x)``
(SiLU for LLaMA-style models, GELU for Gemma), shape ``[batch, pos, d_ff]``; Hugging Face adapters find it by
module structure (`kneuron.engine.models.ffn_site`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from PIL import Image
from torch import nn

from kneuron.engine.errors import KneuronError

HOOK_SITE = "mlp.down_proj.input"


@dataclass(frozen=True)
class ImageConnector:
    """How a Q-Former model turns vision features into LLM image tokens (what a token -> patch map differentiates).

    ``vision``: the module whose output ``last_hidden_state`` ``[B, 1 + n_patches, d_vision]`` (CLS first) the
    connector reads. ``tokens(pixel_values, rows)``: runs the model's own image encoding and returns the LLM
    input embeddings of the image tokens ``[rows, n_image_tokens, d_model]``; a caller may replace `vision`'s
    output by ``rows`` feature rows with a forward hook (so `vision` itself runs on one image only).
    """

    vision: nn.Module
    tokens: Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class ImageRegions:
    """Where each image token of a model comes from on the image (geometry known from the model's own code).

    ``boxes``: ``[n_image_tokens, 4]`` float32 ``(top, left, bottom, right)`` as fractions of the image height
    and width (the whole image is ``(0, 0, 1, 1)``); a row of NaN for a token that carries no image region
    (LLaVA-NeXT's row-end newline tokens). ``grid``: ``(rows, cols)`` of the heatmap grid the boxes are drawn
    on (the finest token grid of the model). A token's heat is spread over the grid cells its box overlaps, in
    proportion to the overlap (`kneuron.engine.signals.heatmap.region_map`).
    """

    boxes: torch.Tensor
    grid: tuple[int, int]


def grid_boxes(rows: int, cols: int, box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
               newline: bool = False) -> torch.Tensor:
    """Boxes ``[rows * (cols + newline), 4]`` of a raster-ordered ``rows x cols`` token grid covering ``box``
    (``(top, left, bottom, right)`` fractions); ``newline``: one extra region-less (NaN) token after every row."""
    top, left, bottom, right = box
    ys = torch.linspace(top, bottom, rows + 1, dtype=torch.float64)
    xs = torch.linspace(left, right, cols + 1, dtype=torch.float64)
    out = torch.full((rows, cols + int(newline), 4), float("nan"), dtype=torch.float64)
    out[:, :cols, 0] = ys[:-1, None]
    out[:, :cols, 1] = xs[None, :-1]
    out[:, :cols, 2] = ys[1:, None]
    out[:, :cols, 3] = xs[None, 1:]
    return out.reshape(-1, 4).float()


@dataclass
class PreparedBatch:
    """Model-ready inputs for ``B`` images that share one prompt.

    ``args``/``kwargs`` go to ``model.forward`` (teacher-forced) — or, with ``targets`` None, to the adapter's
    generate call. ``image_positions``: ``[n_image_tokens]`` positions of the image tokens in the LLM sequence
    (the same for every row). ``prompt_length``: tokens before the first target token. ``target_ids``:
    ``[B, T]`` right-padded teacher-forced tokens (or None); ``target_lengths``: real length per row.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    image_positions: torch.Tensor
    prompt_length: int
    batch_size: int
    target_ids: torch.Tensor | None = None
    target_lengths: list[int] = field(default_factory=list)

    def positions(self, which: str) -> torch.Tensor:
        """Positions P: ``"image"`` (image tokens) or ``"prompt"`` (every prompt position)."""
        if which == "image":
            return self.image_positions
        if which == "prompt":
            return torch.arange(self.prompt_length)
        raise ValueError(f"unknown positions {which!r} (image | prompt)")


class VLMAdapter(ABC):
    """Uniform access to a vision-language model whose text model has a gated MLP (LLaMA, Mistral, Qwen, Gemma)."""

    #: short model id (bundled name, folder name or hub id)
    name: str
    model: nn.Module
    tokenizer: Any
    #: generation settings used for captions (greedy by default)
    max_new_tokens: int = 40

    # ------------------------------------------------------------------ structure
    @abstractmethod
    def decoder_layers(self, root: Any) -> Sequence[Any]:
        """The LLM decoder layers of ``root`` (the model itself or its nnsight Envoy)."""

    def neuron_module(self, root: Any, layer: int) -> Any:
        """The ``down_proj`` module of ``layer``; its input is the neuron activation ``O^l``."""
        return self.decoder_layers(root)[layer].mlp.down_proj

    @contextmanager
    def neuron_hooks(self, hooks: Mapping[int, Callable[..., Any]]) -> Iterator[None]:
        """``hooks[layer]`` registered as forward pre-hooks on the layers' ``down_proj`` (the neuron site: a hook
        sees ``(module, (O^l, ...))`` and may return replaced inputs) for the ``with`` block, removed on exit."""
        handles = [self.neuron_module(self.model, layer).register_forward_pre_hook(hook)
                   for layer, hook in hooks.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @property
    def language_model(self) -> nn.Module:
        """The ``LlamaForCausalLM``-like module (has ``lm_head`` and ``model.norm``)."""
        raise NotImplementedError

    def generation_embeds(self, prepared: PreparedBatch) -> torch.Tensor | None:
        """``inputs_embeds [B, P, d_model]`` of ``prepared`` when the adapter's ``generate`` is exactly
        ``language_model.generate(inputs_embeds=..., attention_mask=ones)`` on them (captioning may then decode
        the language model itself, `kneuron.engine.interventions.greedy`); None (the default) otherwise."""
        return None

    def language_model_inputs(self, prepared: PreparedBatch) -> torch.Tensor | None:
        """``inputs_embeds [B, T, d_model]`` that ``model(*prepared.args, **prepared.kwargs)`` hands its language
        model, teacher-forced targets included (``T = prompt_length + T_target``), when the forward calls it
        with exactly these and an all-ones (or no) ``attention_mask``: no positions, labels or other arguments
        of its own (a caller may then run the language model itself, e.g. with a KV cache,
        `kneuron.engine.baselines.dai`); None (the default) otherwise."""
        return None

    @property
    def n_layers(self) -> int:
        return len(self.decoder_layers(self.model))

    @property
    def d_ff(self) -> int:
        return int(self.neuron_module(self.model, 0).in_features)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.language_model.parameters()).dtype

    @property
    @abstractmethod
    def n_image_tokens(self) -> int:
        """Image tokens per image in the LLM sequence."""

    @property
    def patch_grid(self) -> tuple[int, int] | None:
        """(rows, cols) of image tokens when they map to image regions directly, else None (Q-Former)."""
        return None

    def image_regions(self) -> ImageRegions | None:
        """The image region of every image token when the model's own geometry gives it (merged patches, tiles,
        pixel shuffle, pooling), else None: the heatmap then uses `patch_grid` or `image_connector`.

        An adapter whose image tokens cannot be mapped to image regions raises a one-line `KneuronError`
        saying why, rather than guessing.
        """
        return None

    def image_connector(self) -> ImageConnector:
        """The Q-Former connector that makes this model's image tokens from its ViT patch features.

        Token -> image-region maps of models with neither `image_regions` nor a `patch_grid` are computed
        through it. An adapter whose image tokens cannot be traced back to ViT patches this way raises a
        one-line `KneuronError` saying so (the default here), rather than guessing a map.
        """
        raise KneuronError(f"model {self.name!r} has neither a patch grid nor a known Q-Former: "
                           "no token -> patch map for its image tokens")

    # ------------------------------------------------------------------ inputs
    @abstractmethod
    def pixel_values(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """Model-ready pixels, ``[B, 3, H, W]`` for most models (tiling models: their processor's own layout,
        whose first dimension still concatenates batches): tensors pass through, PIL images are preprocessed."""

    @abstractmethod
    def prepare(
        self,
        images: Sequence[Image.Image] | torch.Tensor,
        targets: Sequence[Sequence[int]] | None = None,
        instruction: str | None = None,
    ) -> PreparedBatch:
        """Build inputs for a batch of images (PIL or `pixel_values` output), optionally teacher-forced."""

    @abstractmethod
    def logits(self, output: Any) -> torch.Tensor:
        """``[B, T, V]`` logits from the model's forward output."""

    # ------------------------------------------------------------------ captioning
    generate_method: str = "generate"

    @abstractmethod
    def generate_call(self, prepared: PreparedBatch, **overrides: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Positional and keyword arguments for ``getattr(model, generate_method)`` (greedy, stop tokens set)."""

    @abstractmethod
    def new_tokens(self, prepared: PreparedBatch, generated: torch.Tensor) -> torch.Tensor:
        """The newly generated tokens ``[B, T_new]`` from what ``generate`` returned."""

    @abstractmethod
    def caption_text(self, token_ids: Sequence[int]) -> str:
        """Decode generated tokens and apply the model's stop/post-processing rule."""

    def caption_ids(self, token_ids: Sequence[int]) -> list[int]:
        """The generated tokens up to (excluding) the first stop token."""
        stops = set(self.stop_token_ids)
        out: list[int] = []
        for tok in token_ids:
            if int(tok) in stops:
                break
            out.append(int(tok))
        return out

    @property
    @abstractmethod
    def stop_token_ids(self) -> list[int]:
        """Token ids that end a caption (EOS and the template's stop token)."""

    # ------------------------------------------------------------------ tokens
    @property
    def pad_id(self) -> int:
        """Padding id for teacher-forced targets and batched generation (EOS when the tokenizer has no pad)."""
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def concept_tokens(self, word: str) -> list[int]:
        """Sub-tokens of a concept word as it appears inside a caption (leading space where it matters)."""
        ids = self.encode(" " + word)
        return ids if ids else self.encode(word)

    @property
    def answer_prefix(self) -> str:
        """Fixed answer prefix used when the concept word is not in the model's own caption."""
        return ""

    # ------------------------------------------------------------------ decoding neurons
    def unembedding(self) -> torch.Tensor:
        """``W_U`` ``[V, d_model]`` (the lm_head weight)."""
        return cast(torch.Tensor, cast(nn.Linear, self.language_model.lm_head).weight)

    def final_norm(self) -> nn.Module:
        return cast(nn.Module, cast(nn.Module, self.language_model.model).norm)

    def down_proj_weight(self, layer: int) -> torch.Tensor:
        """``W_down^l`` ``[d_model, d_ff]``: column ``i`` is neuron ``(l, i)``'s output vector."""
        return cast("torch.Tensor", self.neuron_module(self.model, layer).weight)

    def describe(self) -> dict[str, Any]:
        """Provenance for the warehouse ``runs`` table."""
        return {"name": self.name, "n_layers": self.n_layers, "d_ff": self.d_ff,
                "n_image_tokens": self.n_image_tokens, "hook_site": HOOK_SITE}


def pad_targets(targets: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, list[int]]:
    """Right-pad token lists to ``[B, T_max]`` (causal models: padding after a row cannot change its logits)."""
    lengths = [len(t) for t in targets]
    width = max(lengths) if lengths else 0
    out = torch.full((len(targets), width), pad_id, dtype=torch.long)
    for row, ids in enumerate(targets):
        if ids:
            out[row, : len(ids)] = torch.tensor(list(ids), dtype=torch.long)
    return out, lengths
