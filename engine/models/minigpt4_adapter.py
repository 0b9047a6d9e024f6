"""`VLMAdapter` for `MiniGPT4`, and the loader of a kneuron MiniGPT-4 model folder.

A model folder holds ``kneuron_model.json`` (a `ModelSpec`), ``model.safetensors`` (every MiniGPT-4 weight, or
all but the LLM when ``llm_path`` names the LLM: a Hugging Face LLaMA/Vicuna folder, a GGUF file, a hub id or a
shortcut such as ``smollm2``, see `kneuron.engine.models.llm`) and the tokenizer files (or none: the LLM's tokenizer).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from torch import nn

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.base import ImageConnector, PreparedBatch, VLMAdapter, pad_targets
from kneuron.engine.models.minigpt4 import PROJECTIONS, MiniGPT4, MiniGPT4Config
from kneuron.engine.models.preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocessor
from kneuron.engine.models.prompts import DEFAULT_INSTRUCTION, PromptTemplate, get_template, prompt_token_ids

SPEC_FILE = "kneuron_model.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class ModelSpec:
    """Everything besides weights that defines a MiniGPT-4 model folder."""

    architecture: MiniGPT4Config
    template: str | dict[str, Any] = "vicuna0"
    instruction: str = DEFAULT_INSTRUCTION
    answer_prefix: str = ""
    stop_token_ids: list[int] | None = None
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    llm_path: str | None = None
    max_new_tokens: int = 40
    adapter: str = "minigpt4"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["architecture"] = self.architecture.to_dict()
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        data["architecture"] = MiniGPT4Config.from_dict(data["architecture"])
        for key in ("image_mean", "image_std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


class MiniGPT4Adapter(VLMAdapter):
    """MiniGPT-4 (both variants) behind the common adapter interface."""

    model: MiniGPT4

    def __init__(self, model: MiniGPT4, tokenizer: Any, spec: ModelSpec, name: str = "minigpt4") -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.name = name
        self.template: PromptTemplate = get_template(spec.template)
        self.preprocessor = ImagePreprocessor(spec.architecture.image_size, spec.image_mean, spec.image_std)
        self.max_new_tokens = spec.max_new_tokens
        self._stop_ids: tuple[tuple[int, tuple[str, ...]], list[int]] | None = None
        self._segments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ structure
    def decoder_layers(self, root: Any) -> Sequence[Any]:
        return cast("Sequence[Any]", root.language_model.model.layers)

    @property
    def language_model(self) -> nn.Module:
        return self.model.language_model

    @property
    def n_image_tokens(self) -> int:
        return self.spec.architecture.n_image_tokens

    @property
    def patch_grid(self) -> tuple[int, int] | None:
        arch = self.spec.architecture
        if arch.variant != "patch":
            return None
        side = int(round(arch.n_patches ** 0.5))
        return side, side // arch.patches_per_token

    def image_connector(self) -> ImageConnector:
        """The Q-Former variant: ViT -> Q-Former -> ``llama_proj`` (`MiniGPT4.encode_img`). The patch variant has
        no Q-Former (its tokens group patches directly, see `patch_grid`): `KneuronError`."""
        if self.spec.architecture.variant != "qformer":
            raise KneuronError(f"model {self.name!r} (MiniGPT-4 {self.spec.architecture.variant} variant) has no "
                               "Q-Former: its image tokens map to patches through its patch grid")
        model = self.model
        return ImageConnector(model.vision_model, lambda pixels, rows: model.encode_img(pixels))

    # ------------------------------------------------------------------ tokens
    @property
    def bos_id(self) -> int | None:
        """The tokenizer's BOS id, or None when it has none (see `kneuron.engine.models.prompts` for when it is
        used)."""
        bos = self.tokenizer.bos_token_id
        return None if bos is None else int(bos)

    @property
    def stop_token_ids(self) -> list[int]:
        if self.spec.stop_token_ids is not None:
            return list(self.spec.stop_token_ids)
        key = (id(self.tokenizer), self.template.stop_strings)  # the template's stop strings, tokenized once
        if self._stop_ids is None or self._stop_ids[0] != key:
            ids = [int(self.tokenizer.eos_token_id)]
            for stop in self.template.stop_strings:
                pieces = self.encode(stop)
                if len(pieces) == 1 and pieces[0] not in ids:
                    ids.append(pieces[0])
            self._stop_ids = (key, ids)
        return list(self._stop_ids[1])

    @property
    def answer_prefix(self) -> str:
        return self.spec.answer_prefix

    def prompt_segments(self, instruction: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids before / after the image: ``([n0], [n1])``; BOS (by the template's rule, see
        `prompt_token_ids`) only on the first segment."""
        instruction = instruction or self.spec.instruction
        if instruction not in self._segments:
            before, after = prompt_token_ids(self.template, instruction, self.tokenizer)
            self._segments[instruction] = (torch.tensor(before, dtype=torch.long),
                                           torch.tensor(after, dtype=torch.long))
        return self._segments[instruction]

    # ------------------------------------------------------------------ inputs
    def pixel_values(self, images: Sequence[Image.Image] | torch.Tensor) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            return images
        return self.preprocessor(images)

    def prepare(
        self,
        images: Sequence[Image.Image] | torch.Tensor,
        targets: Sequence[Sequence[int]] | None = None,
        instruction: str | None = None,
    ) -> PreparedBatch:
        device = self.device
        pixel_values = self.pixel_values(images).to(device)
        before, after = self.prompt_segments(instruction)
        n0, n1 = len(before), len(after)
        positions = torch.arange(n0, n0 + self.n_image_tokens)
        b = pixel_values.shape[0]
        target_ids: torch.Tensor | None = None
        lengths: list[int] = []
        args: tuple[Any, ...] = (pixel_values, before.to(device), after.to(device))
        if targets is not None:
            target_ids, lengths = pad_targets(targets, self.pad_id)
            target_ids = target_ids.to(device)
            args = args + (target_ids,)
        return PreparedBatch(args=args, kwargs={}, image_positions=positions,
                             prompt_length=n0 + self.n_image_tokens + n1, batch_size=b,
                             target_ids=target_ids, target_lengths=lengths)

    def logits(self, output: Any) -> torch.Tensor:
        return cast("torch.Tensor", output.logits)

    # ------------------------------------------------------------------ captioning
    def generate_call(self, prepared: PreparedBatch, **overrides: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
        kwargs: dict[str, Any] = dict(max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                      eos_token_id=self.stop_token_ids, pad_token_id=self.pad_id)
        kwargs.update(overrides)
        return prepared.args[:3], kwargs

    def new_tokens(self, prepared: PreparedBatch, generated: torch.Tensor) -> torch.Tensor:
        return generated  # MiniGPT4.generate passes inputs_embeds only: HF returns new tokens only

    def generation_embeds(self, prepared: PreparedBatch) -> torch.Tensor | None:
        with torch.no_grad():  # MiniGPT4.generate: the language model's generate on these, an all-ones mask
            return cast("torch.Tensor", self.model.embed(*prepared.args[:3]))

    def language_model_inputs(self, prepared: PreparedBatch) -> torch.Tensor | None:
        with torch.no_grad():  # MiniGPT4.forward: the language model on these (targets included), an all-ones mask
            return cast("torch.Tensor", self.model.embed(*prepared.args))

    def caption_text(self, token_ids: Sequence[int]) -> str:
        text = self.tokenizer.decode(self.caption_ids(token_ids), skip_special_tokens=True)
        return self.template.clean_answer(text)


# ---------------------------------------------------------------------- loading
def read_spec(folder: Path) -> ModelSpec:
    path = folder / SPEC_FILE
    if not path.is_file():
        raise KneuronError(f"not a kneuron model folder (no {SPEC_FILE}): {folder}")
    try:
        spec = ModelSpec.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise KneuronError(f"unreadable model spec {path}: {exc}") from None
    if spec.architecture.projection not in PROJECTIONS:
        raise KneuronError(f"unknown projection {spec.architecture.projection!r} in {path} "
                           f"(known: {', '.join(PROJECTIONS)})")
    return spec


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                      ignore_prefix: str | None = None) -> None:
    """``load_state_dict(strict=True)`` with one clear error listing missing / unexpected / mis-shaped keys."""
    expected = {k: v for k, v in module.state_dict().items() if not (ignore_prefix and k.startswith(ignore_prefix))}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k} {tuple(state[k].shape)}!={tuple(v.shape)}" for k, v in expected.items()
                    if k in state and tuple(state[k].shape) != tuple(v.shape))
    if missing or unexpected or shapes:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
        parts = [f"{name}: {show(keys)}" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)) if keys]
        raise KneuronError(f"incompatible checkpoint {source}: " + "; ".join(parts))
    module.load_state_dict(state, strict=ignore_prefix is None)


def load_minigpt4(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                  name: str | None = None) -> MiniGPT4Adapter:
    """Load a kneuron MiniGPT-4 folder (bundled tiny model or a converted official checkpoint)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from kneuron.engine.models.llm import load_llm, load_llm_tokenizer, resolve_llm

    folder = Path(folder)
    spec = read_spec(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise KneuronError(f"missing weights {weights}")
    source = resolve_llm(spec.llm_path, base=folder) if spec.llm_path else None
    has_tokenizer = (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file()
    if has_tokenizer:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    elif source is not None:
        tokenizer = load_llm_tokenizer(source)
    else:
        raise KneuronError(f"no tokenizer in {folder}")
    llm = load_llm(source, dtype or torch.float32) if source is not None else None
    model = MiniGPT4(spec.architecture, language_model=llm)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types for corrupt files
        raise KneuronError(f"corrupt weights file {weights}: {str(exc).splitlines()[0]}") from None
    tied = "language_model.lm_head.weight"
    if (llm is None and tied not in state and model.language_model.config.tie_word_embeddings
            and "language_model.model.embed_tokens.weight" in state):
        state[tied] = state["language_model.model.embed_tokens.weight"]
    load_state_strict(model, state, str(weights), ignore_prefix="language_model." if llm is not None else None)
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return MiniGPT4Adapter(model, tokenizer, spec, name=name or folder.name)


def save_minigpt4(adapter_or_model: MiniGPT4, tokenizer: Any, spec: ModelSpec, folder: str | Path,
                  include_llm: bool = True) -> Path:
    """Write a model folder (spec, safetensors weights, tokenizer). Weights are saved contiguous, fp32 unless
    the model is in another dtype."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in adapter_or_model.state_dict().items()
             if include_llm or not k.startswith("language_model.")}
    if "language_model.lm_head.weight" in state and adapter_or_model.language_model.config.tie_word_embeddings:
        state.pop("language_model.lm_head.weight")
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / SPEC_FILE).write_text(spec.to_json() + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder
