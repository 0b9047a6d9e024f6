"""The parts stage-1 training is built from: the vision source and the model it becomes (`build_stage1_model`),
the projection's initialisation, the cached image features, the answer tokens and the objective
(`Stage1Objective`: next-token cross-entropy at the answer positions). `kneuron.engine.training.stage1` runs them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from kneuron.engine.data.coco import CocoDataset
from kneuron.engine.errors import KneuronError
from kneuron.engine.models.minigpt4 import MiniGPT4, MiniGPT4Config
from kneuron.engine.models.minigpt4_adapter import ModelSpec
from kneuron.engine.models.preprocess import ImagePreprocessor

if TYPE_CHECKING:
    pass

#: weights taken from the vision source (everything but the LLM and ``llama_proj``)
VISION_PREFIXES = ("vision_model.", "qformer.", "query_tokens")


def load_vision_source(ref: str) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The spec and the ViT / Q-Former weights of a kneuron MiniGPT-4 model (bundled name or folder)."""
    from safetensors.torch import load_file

    from kneuron.engine.models import resolve_model_path
    from kneuron.engine.models.minigpt4_adapter import WEIGHTS_FILE, read_spec

    folder = resolve_model_path(ref)
    spec = read_spec(folder)
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types
        raise KneuronError(f"cannot read the vision weights of {ref}: {str(exc).splitlines()[0]}") from None
    return spec, {k: v for k, v in state.items() if k.startswith(VISION_PREFIXES)}


def stage1_architecture(source: ModelSpec, projection: str, source_name: str,
                        patches_per_token: int | None = None) -> MiniGPT4Config:
    """``source``'s encoder architecture with a new ``projection`` and no LLM config (the LLM comes from
    ``llm_path``). ``patches_per_token`` (patch models only) regroups the ViT patches into image tokens (default:
    the source's grouping; 1: one image token per patch)."""
    arch = source.architecture
    if patches_per_token is not None and arch.variant != "patch":
        raise KneuronError(f"--patches-per-token applies to patch models; {source_name} is a {arch.variant} model")
    group = patches_per_token or arch.patches_per_token
    if arch.n_patches % group:
        raise KneuronError(f"the {arch.n_patches} patches of {source_name} do not group by {group}")
    return MiniGPT4Config(variant=arch.variant, vision=arch.vision, qformer=arch.qformer,
                          num_query_tokens=arch.num_query_tokens, llm=None, patches_per_token=group,
                          ln_vision_eps=arch.ln_vision_eps, projection=projection)


def build_stage1_model(config: MiniGPT4Config, vision_state: dict[str, torch.Tensor], llm: nn.Module,
                       source_name: str) -> MiniGPT4:
    """A `MiniGPT4` of ``config`` with the encoder weights ``vision_state``, the given LLM and a new projection."""
    model = MiniGPT4(config, language_model=llm)  # type: ignore[arg-type]
    expected = {k for k in model.state_dict() if k.startswith(VISION_PREFIXES)}
    missing, unexpected = sorted(expected - set(vision_state)), sorted(set(vision_state) - expected)
    if missing or unexpected:
        raise KneuronError(f"vision weights of {source_name} do not fit its own architecture: "
                           f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.load_state_dict(vision_state, strict=False)
    return model


@torch.no_grad()
def init_projection(projection: nn.Module, features: torch.Tensor, embed_weight: torch.Tensor, scale: float) -> float:
    """Zero the biases and rescale the last layer so ``projection(features)`` has ``scale`` x the RMS of the
    token embeddings ``embed_weight [V, d_model]``; ``features [N, T, d_in]`` is a sample. Returns the target RMS."""
    linears = [m for m in projection.modules() if isinstance(m, nn.Linear)]
    for layer in linears:
        if layer.bias is not None:
            layer.bias.zero_()
    target = float(embed_weight.float().pow(2).mean().sqrt()) * scale
    current = float(projection(features).float().pow(2).mean().sqrt())
    linears[-1].weight.mul_(target / max(current, 1e-12))
    return target


# ---------------------------------------------------------------------- data
def load_images(data: CocoDataset, ids: list[int], size: int) -> torch.Tensor:
    """uint8 ``[N, size, size, 3]`` images of ``ids`` (bicubic resize only where needed, as the preprocessor)."""
    from PIL import Image

    out = np.zeros((len(ids), size, size, 3), dtype=np.uint8)
    for row, image_id in enumerate(ids):
        image = data.load_image(image_id).convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        out[row] = np.asarray(image)
    return torch.from_numpy(out)


@torch.no_grad()
def cache_features(model: MiniGPT4, raw: torch.Tensor, preprocess: ImagePreprocessor, vit_only: bool,
                   batch_size: int = 256) -> torch.Tensor:
    """Frozen-encoder outputs of uint8 images ``raw [N, H, W, 3]``: ``[N, n_image_tokens, d_in]`` (what
    ``llama_proj`` reads) or, with ``vit_only``, the ViT output ``[N, 1 + n_patches, d_vision]``."""
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    device = next(model.vision_model.parameters()).device
    parts = []
    for start in range(0, len(raw), batch_size):
        pixels = ((raw[start:start + batch_size].permute(0, 3, 1, 2).float() / 255.0 - mean) / std).to(device)
        vit = model.vision_model(pixel_values=pixels).last_hidden_state
        parts.append((vit if vit_only else model.connect(vit)).cpu())
    return torch.cat(parts)


def encode_answers(tokenizer: Any, captions: list[list[str]], stop_ids: list[int]) -> list[list[list[int]]]:
    """Token ids of every caption followed by the template's stop string (``stop_ids``)."""
    return [[list(tokenizer(c, add_special_tokens=False)["input_ids"]) + stop_ids for c in caps] for caps in captions]


def pad_batch(picks: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``[B, T]`` token ids and the ``[B, T]`` mask of real tokens."""
    width = max(len(p) for p in picks)
    ids = torch.full((len(picks), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(picks), width), dtype=torch.bool)
    for row, p in enumerate(picks):
        ids[row, :len(p)] = torch.tensor(p)
        mask[row, :len(p)] = True
    return ids, mask


# ---------------------------------------------------------------------- the objective
class Stage1Objective:
    """Answer-token cross-entropy of a frozen LLM fed ``[prefix, projected image tokens, suffix, answer]``.

    ``before``/``after``: the prompt's token ids around the image (BOS included by the template's rule).
    Embeddings of the fixed prompt are computed once; logits only at the positions that predict answer tokens.
    """

    def __init__(self, model: MiniGPT4, before: list[int], after: list[int]) -> None:
        self.model = model
        llm: Any = model.language_model
        self.embed = llm.get_input_embeddings()
        device = self.embed.weight.device
        with torch.no_grad():
            self.before = self.embed(torch.tensor(before, dtype=torch.long, device=device))  # [n0, d_model]
            self.after = self.embed(torch.tensor(after, dtype=torch.long, device=device))  # [n1, d_model]
        self.prompt_length = len(before) + model.config.n_image_tokens + len(after)

    def image_tokens(self, features: torch.Tensor, vit_features: bool) -> torch.Tensor:
        """Cached features -> projected image tokens ``[B, n_image_tokens, d_model]``."""
        if vit_features:
            features = self.model.connect(features)
        return cast("torch.Tensor", self.model.llama_proj(features))

    def loss(self, image: torch.Tensor, answers: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``answers [B, T]`` (``mask`` marks real tokens) given image tokens ``image``."""
        b = image.shape[0]
        llm: Any = self.model.language_model
        embeds = torch.cat([self.before.expand(b, -1, -1), image.to(self.before.dtype),
                            self.after.expand(b, -1, -1), self.embed(answers)], dim=1)
        hidden = llm.model(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                                                                           device=embeds.device)).last_hidden_state
        t = answers.shape[1]
        pred = hidden[:, self.prompt_length - 1: self.prompt_length - 1 + t][mask]  # position p predicts p + 1
        return nn.functional.cross_entropy(llm.lm_head(pred).float(), answers[mask])


# ---------------------------------------------------------------------- the run
def trainable_parameters(model: MiniGPT4, train_queries: bool) -> list[nn.Parameter]:
    """Freeze everything but ``llama_proj`` (and the Q-Former queries with ``train_queries``); return those."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.llama_proj.parameters())
    if train_queries:
        params.append(model.query_tokens)
    for p in params:
        p.requires_grad_(True)
    return params
