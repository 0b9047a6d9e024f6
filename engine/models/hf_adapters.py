"""`VLMAdapter`s for Hugging Face LLaVA, BLIP-2 and InstructBLIP, and `HFVLMAdapter`, the base of every Hugging
Face adapter (the newer families live in their own modules: `qwen2_vl`, `llava_next`, `idefics3`, `gemma3`).

Text model: any decoder with a gated MLP ``down_proj(act(gate_proj(x)) * up_proj(x))`` (LLaMA, Mistral, Qwen2/3,
Gemma 2/3, SmolLM), found by module structure under `HFVLMAdapter.text_model_path` (`kneuron.engine.models.ffn_site`).

All three splice image features into the LLM sequence at the positions where ``input_ids`` holds the image
placeholder id (``config.image_token_id``), so the adapters build ``input_ids`` themselves:

- LLaVA (``LlavaForConditionalGeneration``, transformers-5 layout): ``USER: <image>\\n{instruction} ASSISTANT:``
  with BOS first and the one ``<image>`` expanded to ``n_image_tokens`` placeholder ids (LLaVA-1.5's chat
  format, as ``LlavaProcessor`` does it). Decoder layers: ``model.model.language_model.layers``; ``lm_head`` is
  top level. With ``vision_feature_select_strategy="default"`` (CLS dropped) each image token is one ViT patch
  and `patch_grid` is the patch grid; with ``"full"`` the first image token is the CLS token and it is None.
- BLIP-2 (``Blip2ForConditionalGeneration``): ``num_query_tokens`` placeholder ids **before** BOS, then
  ``Question: {instruction} Answer:`` (``Blip2Processor``'s convention: image tokens precede BOS).
- InstructBLIP (``InstructBlipForConditionalGeneration``): placeholder ids before BOS, then the raw
  instruction (LAVIS's InstructBLIP prompt); the Q-Former also reads the instruction (``qformer_input_ids``,
  tokenized with the folder's ``qformer_tokenizer/``).

BLIP-2 and InstructBLIP: decoder layers ``model.language_model.model.layers`` (the LM is a ``*ForCausalLM``).
All rows of a batch share one prompt, so no padding is needed; teacher-forced targets are appended right-padded
(causal model: padding after a row's tokens cannot change that row's logits). HF ``generate`` returns the prompt
followed by the new tokens for all three, so `new_tokens` slices the prompt off.

Images: the folder's image processor (``preprocessor_config.json``, via ``AutoImageProcessor``) when present,
else the fallback `ImagePreprocessor`: bicubic resize to the vision tower's ``image_size`` (no crop) and CLIP
mean/std (the normalisation LLaVA-1.5 and BLIP-2 were trained with).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from PIL import Image
from torch import nn

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import ImageConnector, PreparedBatch, VLMAdapter, pad_targets
from kneuron.engine.models.ffn_site import FFNSite, find_ffn_site, split_path, walk
from kneuron.engine.models.preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocessor
from kneuron.engine.models.prompts import DEFAULT_INSTRUCTION

#: the image placeholder inside prompt templates (replaced by the tokenizer's image token / placeholder ids)
IMAGE_MARKER = "<image>"

LLAVA_TEMPLATE = "USER: <image>\n{instruction} ASSISTANT:"
BLIP2_TEMPLATE = "<image>Question: {instruction} Answer:"
INSTRUCTBLIP_TEMPLATE = "<image>{instruction}"

QFORMER_TOKENIZER_DIR = "qformer_tokenizer"


class CausalLMView(nn.Module):
    """A ``LlamaForCausalLM``-shaped view (``.model`` with ``.norm``/``.layers``, ``.lm_head``, ``.config``) over
    modules owned by another model. Nothing is copied; the view is not part of the adapter's traced model."""

    def __init__(self, model: nn.Module, lm_head: nn.Module, config: Any) -> None:
        super().__init__()
        self.model = model
        self.lm_head = lm_head
        self.config = config


def encode_prompt(tokenizer: Any, template: str, instruction: str, image_token_id: int, n_image_tokens: int
                  ) -> list[int]:
    """Prompt token ids with ``n_image_tokens`` copies of ``image_token_id`` where the template has `IMAGE_MARKER`.

    - Template starting with the image (BLIP-2 style): ``[image] * n`` + ``tokenizer(rest)`` (with BOS).
    - Otherwise, when the tokenizer knows the image token: the whole text is tokenized at once (BOS first,
      the image token split out as a special token) and its one image id expanded ``n`` times, exactly as the
      HF processors expand the placeholder.
    - Otherwise: text before the image with BOS, the text after without special tokens.
    """
    text = template.format(instruction=instruction)
    before, sep, after = text.partition(IMAGE_MARKER)
    if not sep:
        raise ValueError(f"prompt template has no {IMAGE_MARKER}: {template!r}")
    image = [int(image_token_id)] * n_image_tokens
    if not before:
        return image + list(tokenizer(after, add_special_tokens=True)["input_ids"])
    image_token = tokenizer.convert_ids_to_tokens(int(image_token_id))
    if image_token is not None and tokenizer.convert_tokens_to_ids(image_token) == int(image_token_id):
        ids = list(tokenizer(before + image_token + after, add_special_tokens=True)["input_ids"])
        if ids.count(int(image_token_id)) == 1:
            at = ids.index(int(image_token_id))
            return ids[:at] + image + ids[at + 1:]
    return (list(tokenizer(before, add_special_tokens=True)["input_ids"]) + image
            + list(tokenizer(after, add_special_tokens=False)["input_ids"]))


class HFVLMAdapter(VLMAdapter):
    """Shared logic of the Hugging Face adapters: FFN site, prompt ids, preprocessing, teacher forcing, generation.

    ``model``'s forward and generate take ``input_ids``/``attention_mask``/``pixel_values`` keyword arguments
    (plus `extra_inputs`); the prepared batch carries them in ``kwargs`` (``args`` is empty).
    """

    #: a Hugging Face ``*ForConditionalGeneration``; its submodules differ by family and are reached by attribute
    model: Any
    family: str = ""
    default_template: str = ""
    #: the transformers class the loader builds (``getattr(transformers, hf_class)``)
    hf_class: str = ""
    #: dotted paths from ``model`` to the text decoder stack (layers + final norm) and to the LM head
    text_model_path: str = "model.language_model"
    lm_head_path: str = "lm_head"
    #: the loader refuses a folder without an image processor (no CLIP-style fallback for tiling processors)
    needs_image_processor: bool = False

    def __init__(self, model: nn.Module, tokenizer: Any, name: str | None = None, image_processor: Any = None,
                 instruction: str | None = None, template: str | None = None, max_new_tokens: int = 40) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.name = name or self.family
        self.image_processor = image_processor
        self.instruction = instruction or DEFAULT_INSTRUCTION
        self.template = template or self.default_template
        self.max_new_tokens = max_new_tokens
        size = getattr(self.vision_config, "image_size", None)
        self.fallback_preprocessor = ImagePreprocessor(int(size), CLIP_MEAN, CLIP_STD) if size else None
        self._prompts: dict[str, list[int]] = {}
        self.ffn_site: FFNSite = self.find_site(self.model)
        self._lm_view = CausalLMView(self.text_model, walk(self.model, split_path(self.lm_head_path)),
                                     self.config.get_text_config())

    # ------------------------------------------------------------------ structure
    @classmethod
    def find_site(cls, model: nn.Module) -> FFNSite:
        """The gated-MLP neuron site of ``model``'s text model (a real model or a meta-device skeleton), else a
        one-line `KneuronError` naming the text architecture."""
        return find_ffn_site(model, split_path(cls.text_model_path))

    def decoder_layers(self, root: Any) -> Sequence[Any]:
        return cast("Sequence[Any]", self.ffn_site.layers(root))

    def neuron_module(self, root: Any, layer: int) -> Any:
        return self.ffn_site.down_proj(root, layer)

    @property
    def d_ff(self) -> int:
        return self.ffn_site.d_ff

    @property
    def text_model(self) -> nn.Module:
        """The text decoder stack (``.layers``, ``.norm``, ``.embed_tokens``)."""
        return cast("nn.Module", walk(self.model, split_path(self.text_model_path)))

    @property
    def language_model(self) -> nn.Module:
        return self._lm_view

    def unembedding(self) -> torch.Tensor:
        return cast("torch.Tensor", walk(self.model, split_path(self.lm_head_path)).weight)

    def final_norm(self) -> nn.Module:
        return cast(nn.Module, self.text_model.norm)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def vision_config(self) -> Any:
        return self.config.vision_config

    @property
    def image_token_id(self) -> int:
        return int(self.config.image_token_id)

    # ------------------------------------------------------------------ tokens
    #: template end-of-turn tokens that also end a caption when the tokenizer knows them
    stop_tokens: tuple[str, ...] = ()

    @property
    def stop_token_ids(self) -> list[int]:
        ids = [int(self.tokenizer.eos_token_id)]
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        unk = self.tokenizer.unk_token_id
        named = [self.tokenizer.convert_tokens_to_ids(tok) for tok in self.stop_tokens]
        for tok in list(configured if isinstance(configured, (list, tuple)) else [configured]) + named:
            if tok is not None and tok != unk and int(tok) not in ids:
                ids.append(int(tok))
        return ids

    def prompt_ids(self, instruction: str | None = None) -> list[int]:
        """Token ids of the whole prompt (image placeholders included), ``[prompt_length]``."""
        instruction = instruction or self.instruction
        if instruction not in self._prompts:
            self._prompts[instruction] = encode_prompt(self.tokenizer, self.template, instruction,
                                                       self.image_token_id, self.n_image_tokens)
        return self._prompts[instruction]

    def image_positions_of(self, input_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Positions where ``input_ids == image_token_id``  ``[n_image_tokens]``."""
        ids = torch.as_tensor(input_ids)
        return (ids == self.image_token_id).nonzero().flatten()

    # ------------------------------------------------------------------ inputs
    def pixel_values(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]``: tensors pass through; PIL images go through the image processor (or the fallback)."""
        if isinstance(images, torch.Tensor):
            return images
        rgb = [image.convert("RGB") for image in images]
        if self.image_processor is not None:
            return cast("torch.Tensor", self.image_processor(images=rgb, return_tensors="pt")["pixel_values"])
        if self.fallback_preprocessor is None:
            raise KneuronError(f"model {self.name!r} has no image processor (preprocessor_config.json)")
        return self.fallback_preprocessor(rgb)

    def extra_inputs(self, batch_size: int, instruction: str) -> dict[str, torch.Tensor]:
        """Family-specific keyword inputs besides ids, mask and pixels (InstructBLIP's Q-Former text)."""
        return {}

    def batch_size_of(self, pixel_values: torch.Tensor) -> int:
        """Images in a `pixel_values` batch (its first dimension unless the family's layout says otherwise)."""
        return int(pixel_values.shape[0])

    def sequence_inputs(self, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Family-specific keyword inputs that follow the token sequence ``[B, T]`` (token-type ids, grids)."""
        return {}

    def prepare(
        self,
        images: Sequence[Image.Image] | torch.Tensor,
        targets: Sequence[Sequence[int]] | None = None,
        instruction: str | None = None,
    ) -> PreparedBatch:
        device = self.device
        instruction = instruction or self.instruction
        vision_dtype = self.vision_dtype
        pixel_values = self.pixel_values(images).to(device=device, dtype=vision_dtype)
        b = self.batch_size_of(pixel_values)
        prompt = torch.tensor(self.prompt_ids(instruction), dtype=torch.long)
        input_ids = prompt.unsqueeze(0).expand(b, -1)
        target_ids: torch.Tensor | None = None
        lengths: list[int] = []
        if targets is not None:
            if len(targets) != b:
                raise ValueError(f"{len(targets)} target rows for {b} images")
            target_ids, lengths = pad_targets(targets, self.pad_id)
            input_ids = torch.cat([input_ids, target_ids], dim=1)
            target_ids = target_ids.to(device)
        input_ids = input_ids.contiguous().to(device)
        kwargs: dict[str, Any] = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                      pixel_values=pixel_values)
        kwargs.update({k: v.to(device) for k, v in self.extra_inputs(b, instruction).items()})
        kwargs.update({k: v.to(device) for k, v in self.sequence_inputs(input_ids).items()})
        return PreparedBatch(args=(), kwargs=kwargs, image_positions=self.image_positions_of(prompt),
                             prompt_length=len(prompt), batch_size=b, target_ids=target_ids, target_lengths=lengths)

    @property
    def vision_dtype(self) -> torch.dtype:
        return next(self.vision_tower.parameters()).dtype

    @property
    def vision_tower(self) -> nn.Module:
        raise NotImplementedError

    def logits(self, output: Any) -> torch.Tensor:
        return cast("torch.Tensor", output.logits)

    # ------------------------------------------------------------------ captioning
    def generate_call(self, prepared: PreparedBatch, **overrides: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        kwargs: dict[str, Any] = {k: v for k, v in prepared.kwargs.items()}
        kwargs.update(max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                      eos_token_id=self.stop_token_ids, pad_token_id=self.pad_id)
        kwargs.update(overrides)
        return (), kwargs

    def new_tokens(self, prepared: PreparedBatch, generated: torch.Tensor) -> torch.Tensor:
        return generated[:, prepared.prompt_length:]  # HF generate returns prompt + new tokens here

    def caption_text(self, token_ids: Sequence[int]) -> str:
        return cast("str", self.tokenizer.decode(self.caption_ids(token_ids), skip_special_tokens=True).strip())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "family": self.family, "template": self.template}


class LlavaAdapter(HFVLMAdapter):
    """``LlavaForConditionalGeneration`` (transformers 5: ``model.model.language_model`` is the text model)."""

    family = "llava"
    default_template = LLAVA_TEMPLATE
    hf_class = "LlavaForConditionalGeneration"

    @property
    def vision_tower(self) -> nn.Module:
        return cast("nn.Module", self.model.model.vision_tower)

    @property
    def _patch_side(self) -> int:
        return int(self.vision_config.image_size) // int(self.vision_config.patch_size)

    @property
    def n_image_tokens(self) -> int:
        """Patches, plus the CLS token with ``vision_feature_select_strategy="full"`` (CLIP-style tower)."""
        extra = 1 if self.config.vision_feature_select_strategy == "full" else 0
        return self._patch_side ** 2 + extra

    @property
    def patch_grid(self) -> tuple[int, int] | None:
        if self.config.vision_feature_select_strategy != "default":
            return None
        return self._patch_side, self._patch_side

    def image_connector(self) -> ImageConnector:
        """LLaVA has no Q-Former: with ``"default"`` its image tokens are patches (`patch_grid`); with ``"full"``
        the CLS token comes first and no map is drawn: `KneuronError`."""
        raise KneuronError(f"model {self.name!r} (LLaVA, vision_feature_select_strategy="
                           f"{self.config.vision_feature_select_strategy!r}) has no Q-Former and its image tokens "
                           "are not a patch grid: no token -> patch map for its image tokens")


class Blip2Adapter(HFVLMAdapter):
    """``Blip2ForConditionalGeneration`` with a gated-MLP language model (``model.language_model`` is a
    ``*ForCausalLM``, e.g. ``LlamaForCausalLM``)."""

    family = "blip-2"
    default_template = BLIP2_TEMPLATE
    hf_class = "Blip2ForConditionalGeneration"
    text_model_path = "language_model.model"
    lm_head_path = "language_model.lm_head"

    @property
    def language_model(self) -> nn.Module:
        return cast("nn.Module", self.model.language_model)

    @property
    def vision_tower(self) -> nn.Module:
        return cast("nn.Module", self.model.vision_model)

    @property
    def n_image_tokens(self) -> int:
        return int(self.config.num_query_tokens)

    def image_connector(self) -> ImageConnector:
        """ViT -> Q-Former -> ``language_projection`` (``get_image_features(...).pooler_output``)."""
        model = self.model

        def tokens(pixels: torch.Tensor, rows: int) -> torch.Tensor:
            extra = {k: v.to(self.device) for k, v in self.extra_inputs(rows, self.instruction).items()}
            return cast("torch.Tensor", model.get_image_features(pixels, **extra).pooler_output)

        return ImageConnector(self.vision_tower, tokens)

    def language_model_inputs(self, prepared: PreparedBatch) -> torch.Tensor | None:
        """As the model's forward builds them: the prompt's (and targets') token embeddings with the image
        placeholders replaced by ``get_image_features(...).pooler_output``; None for an encoder-decoder language
        model, a mask that is not all ones or inputs the forward would pass on to the language model."""
        model = self.model
        inputs = dict(prepared.kwargs)
        input_ids, pixels, mask = inputs.pop("input_ids"), inputs.pop("pixel_values"), inputs.pop("attention_mask")
        if (prepared.args or set(inputs) - {"qformer_input_ids", "qformer_attention_mask"}
                or not model.config.use_decoder_only_language_model or not bool((mask == 1).all())):
            return None
        with torch.no_grad():
            image = model.get_image_features(pixels, **inputs).pooler_output  # InstructBLIP: + the Q-Former text
            embeds = model.get_input_embeddings()(input_ids)
            where = model.get_placeholder_mask(input_ids, inputs_embeds=embeds)
            return cast("torch.Tensor", embeds.masked_scatter(where, image.to(embeds.device, embeds.dtype)))


class InstructBlipAdapter(Blip2Adapter):
    """``InstructBlipForConditionalGeneration``: BLIP-2 plus the instruction fed to the Q-Former."""

    family = "instructblip"
    default_template = INSTRUCTBLIP_TEMPLATE
    hf_class = "InstructBlipForConditionalGeneration"

    def __init__(self, model: nn.Module, tokenizer: Any, name: str | None = None, image_processor: Any = None,
                 instruction: str | None = None, template: str | None = None, max_new_tokens: int = 40,
                 qformer_tokenizer: Any = None) -> None:
        if qformer_tokenizer is None:
            raise ValueError("InstructBLIP needs the Q-Former tokenizer")
        super().__init__(model, tokenizer, name, image_processor, instruction, template, max_new_tokens)
        self.qformer_tokenizer = qformer_tokenizer

    def extra_inputs(self, batch_size: int, instruction: str) -> dict[str, torch.Tensor]:
        ids = torch.tensor(self.qformer_tokenizer(instruction, add_special_tokens=True)["input_ids"],
                           dtype=torch.long).unsqueeze(0).expand(batch_size, -1).contiguous()
        return {"qformer_input_ids": ids, "qformer_attention_mask": torch.ones_like(ids)}


#: the families of this module by config ``model_type`` (the loader's registry adds the newer ones)
ADAPTERS: dict[str, type[HFVLMAdapter]] = {"llava": LlavaAdapter, "blip-2": Blip2Adapter,
                                            "instructblip": InstructBlipAdapter}

__all__ = ["ADAPTERS", "Blip2Adapter", "CausalLMView", "HFVLMAdapter", "InstructBlipAdapter", "LlavaAdapter",
           "encode_prompt"]
