"""MiniGPT-4's first training stage with a frozen pretrained LLM: only ``llama_proj`` learns.

The ViT (and Q-Former, if any) come from a kneuron MiniGPT-4 model (``vision_from``: a bundled name such as
``tiny-shapes-patch`` or a model folder) and stay frozen; the LLM (`kneuron.engine.models.llm`: a Hugging Face
LLaMA-family folder, a GGUF file, a hub id or the ``smollm2`` shortcut) stays frozen too — fine-tuning it
would change the very neurons kneuron studies. Trained: ``llama_proj`` (``linear`` or ``mlp2x_gelu``) and,
with ``train_queries``, the Q-Former's query tokens (as MiniGPT-4's Q-Former stage could).

Objective: MiniGPT-4's — next-token cross-entropy on the answer tokens (a caption of the image, then the
template's stop string) after ``[BOS + prompt before the image, image tokens, prompt after the image]``.
Because the encoders are frozen, the features ``llama_proj`` reads are computed once for every training image
(`cache_features`); with ``train_queries`` the ViT outputs are cached and the Q-Former runs every step. The
LLM's logits are computed at the answer positions only. Initialisation: biases zero and the last layer scaled
so that the image tokens' RMS is ``init_scale`` x the RMS of the LLM's token embeddings.

Output: a kneuron model folder whose ``kneuron_model.json`` names the LLM in ``llm_path`` (no LLM weights are
copied) and holds the template; ``model.safetensors`` holds the ViT, Q-Former and ``llama_proj`` weights;
``train_log.json`` the configuration, the loss curve and the timings. Deterministic for a seed and thread count.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from kneuron.engine.data.coco import CocoDataset
from kneuron.engine.errors import KneuronError
from kneuron.engine.models.minigpt4 import PROJECTIONS, MiniGPT4, MiniGPT4Config
from kneuron.engine.models.minigpt4_adapter import MiniGPT4Adapter, ModelSpec, save_minigpt4
from kneuron.engine.models.preprocess import ImagePreprocessor
from kneuron.engine.models.prompts import (
    DEFAULT_INSTRUCTION,
    TEMPLATES,
    PromptTemplate,
    get_template,
    prompt_token_ids,
)
from kneuron.engine.runtime.scoped import seeded_torch
from kneuron.engine.training.optim import adamw, clipped_step, cosine_lr
from kneuron.engine.training.stage1_parts import (
    Stage1Objective,
    build_stage1_model,
    cache_features,
    encode_answers,
    init_projection,
    load_images,
    load_vision_source,
    pad_batch,
    stage1_architecture,
    trainable_parameters,
)

if TYPE_CHECKING:
    from kneuron.engine.models.llm import LLMSource

logger = logging.getLogger(__name__)

#: the template used when neither ``template`` nor an LLM shortcut names one (MiniGPT-4's stage-1 format)
FALLBACK_TEMPLATE = "vicuna0_train"


@dataclass
class Stage1Config:
    """Hyper-parameters of a stage-1 run. Defaults: MiniGPT-4's linear projection and the source's patch grouping;
    the bundled SmolLM2 testbed's recipe is the command in its ``train_log.json`` (see engine/models/README.md)."""

    llm: str = "smollm2"
    vision_from: str = "tiny-shapes-patch"
    projection: str = "linear"
    train_queries: bool = False
    patches_per_token: int | None = None
    template: str | None = None
    instruction: str = DEFAULT_INSTRUCTION
    answer_prefix: str = "a"
    split: str = "train"
    seed: int = 0
    steps: int = 600
    batch_size: int = 12
    lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    init_scale: float = 1.0
    threads: int = 1
    device: str = "cpu"
    max_new_tokens: int = 32
    log_every: int = 20
    eval_every: int = 100
    eval_images: int = 48
    eval_split: str = "val"

    def check(self) -> None:
        """`KneuronError` for a bad value (before anything is loaded)."""
        if self.projection not in PROJECTIONS:
            raise KneuronError(f"unknown projection {self.projection!r}; use {' or '.join(PROJECTIONS)}")
        if self.template is not None and self.template not in TEMPLATES:
            raise KneuronError(f"unknown template {self.template!r}; built-in: {', '.join(TEMPLATES)}")
        if self.patches_per_token is not None and self.patches_per_token < 1:
            raise KneuronError(f"patches_per_token must be at least 1, got {self.patches_per_token}")
        for name in ("steps", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise KneuronError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class Stage1Log:
    """What `train_stage1` reports and writes to ``train_log.json``."""

    losses: list[tuple[int, float]] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    seconds_cache: float = 0.0
    seconds_train: float = 0.0
    seconds_per_step: float = 0.0


# ---------------------------------------------------------------------- building the model
def train_stage1(world_dir: Path, out_dir: Path, cfg: Stage1Config, log: Callable[[str], None] | None = None,
                 command: str | None = None) -> tuple[MiniGPT4Adapter, Stage1Log]:
    """Train ``llama_proj`` on ``world_dir``'s ``cfg.split`` and save the model folder ``out_dir``.

    log: where the progress lines go (default: this module's logger at INFO). Torch's global RNG is seeded with
    ``cfg.seed`` for the training only and restored afterwards.
    """
    with seeded_torch(cfg.seed):
        return _train_stage1(world_dir, out_dir, cfg, log or logger.info, command)


@dataclass
class _Stage1Parts:
    """What a stage-1 run trains with: the LLM ``source``, the encoder ``source_spec``, the assembled ``model``, its
    trainable ``params`` (`trainable_parameters`), the LLM's ``tokenizer``, the prompt ``template``, the prompt's
    token ids ``before``/``after`` the image and the ids of the template's stop string."""

    source: LLMSource
    source_spec: ModelSpec
    model: MiniGPT4
    params: list[nn.Parameter]
    tokenizer: Any
    template: PromptTemplate
    before: list[int]
    after: list[int]
    stop_ids: list[int]


class _TrainingSet(NamedTuple):
    """The cached frozen-encoder ``features [N, T, d]`` of the N training images, the token ids of every caption
    of each (`encode_answers`), the evaluation set (`_eval_set`, or None) and the seconds caching took."""

    features: torch.Tensor
    answers: list[list[list[int]]]
    eval_set: tuple[torch.Tensor, list[list[int]]] | None
    seconds: float


def _train_stage1(world_dir: Path, out_dir: Path, cfg: Stage1Config, log: Callable[[str], None],
                  command: str | None) -> tuple[MiniGPT4Adapter, Stage1Log]:
    """`train_stage1` under its seeded torch RNG: check, load, cache, initialise, train, save."""
    from kneuron.engine.models.llm import resolve_llm

    cfg.check()
    source = resolve_llm(cfg.llm)
    vision_spec, vision_state = load_vision_source(cfg.vision_from)
    arch = stage1_architecture(vision_spec, cfg.projection, cfg.vision_from, cfg.patches_per_token)
    if cfg.train_queries and vision_spec.architecture.variant != "qformer":
        raise KneuronError(f"--train-queries needs a Q-Former model; {cfg.vision_from} is a "
                           f"{vision_spec.architecture.variant} model")
    data = CocoDataset(world_dir, cfg.split)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)

    parts = _load_parts(source, vision_spec, arch, vision_state, cfg, log)
    training = _cache_training_set(world_dir, data, parts, cfg, log)
    run_log = Stage1Log(seconds_cache=training.seconds)
    objective = _init_objective(parts, training.features, rng, cfg, log)
    final_loss = _train(objective, parts, training, rng, cfg, run_log, log)
    spec = _save_stage1(out_dir, world_dir, parts, cfg, command, final_loss, run_log)
    log(f"trained {cfg.steps} steps in {run_log.seconds_train} s ({run_log.seconds_per_step} s/step)")
    return MiniGPT4Adapter(parts.model, parts.tokenizer, spec, name=Path(out_dir).name), run_log


def _load_parts(source: LLMSource, vision_spec: ModelSpec, arch: MiniGPT4Config,
                vision_state: dict[str, torch.Tensor], cfg: Stage1Config, log: Callable[[str], None]
                ) -> _Stage1Parts:
    """Load the LLM, assemble the model on ``cfg.device`` with only ``llama_proj`` (and queries) trainable, and
    tokenise the prompt and the stop string."""
    from kneuron.engine.models.llm import load_llm, load_llm_tokenizer

    log(f"loading LLM {source.describe()}")
    started = time.perf_counter()
    tokenizer = load_llm_tokenizer(source)
    llm = load_llm(source)
    log(f"loaded LLM in {time.perf_counter() - started:.1f} s: {llm.config.num_hidden_layers} layers x "
        f"{llm.config.intermediate_size} FFN units, width {llm.config.hidden_size}")
    model = build_stage1_model(arch, vision_state, llm, cfg.vision_from).to(cfg.device)
    model.eval()  # dropout off everywhere; only llama_proj (and queries) get gradients
    params = trainable_parameters(model, cfg.train_queries)
    template = get_template(cfg.template or source.template or FALLBACK_TEMPLATE)
    before, after = prompt_token_ids(template, cfg.instruction, tokenizer)
    stop_ids = list(tokenizer(template.stop_strings[0], add_special_tokens=False)["input_ids"])
    return _Stage1Parts(source, vision_spec, model, params, tokenizer, template, before, after, stop_ids)


def _cache_training_set(world_dir: Path, data: CocoDataset, parts: _Stage1Parts, cfg: Stage1Config,
                        log: Callable[[str], None]) -> _TrainingSet:
    """Frozen-encoder features (on ``cfg.device``, so each step indexes there) and answer token ids of every
    training image, plus the evaluation set; computed once."""
    started = time.perf_counter()
    ids = data.image_ids()
    image_size = parts.model.config.image_size
    preprocess = ImagePreprocessor(image_size, parts.source_spec.image_mean, parts.source_spec.image_std)
    features = cache_features(parts.model, load_images(data, ids, image_size), preprocess, cfg.train_queries
                              ).to(cfg.device)
    answers = encode_answers(parts.tokenizer, [data.captions(i) for i in ids], parts.stop_ids)
    eval_set = _eval_set(world_dir, cfg, parts.model, preprocess, parts.tokenizer, parts.stop_ids)
    seconds = round(time.perf_counter() - started, 1)
    log(f"cached frozen-encoder features of {len(ids)} images {tuple(features.shape)} in {seconds} s")
    return _TrainingSet(features, answers, eval_set, seconds)


def _init_objective(parts: _Stage1Parts, features: torch.Tensor, rng: np.random.Generator, cfg: Stage1Config,
                    log: Callable[[str], None]) -> Stage1Objective:
    """The objective, after `init_projection` on a sample of at most 256 of the cached ``features [N, T, d]``."""
    model = parts.model
    objective = Stage1Objective(model, parts.before, parts.after)
    n = len(features)
    sample = features[torch.from_numpy(rng.choice(n, min(256, n), replace=False)).to(cfg.device)]
    with torch.no_grad():
        probe = model.connect(sample) if cfg.train_queries else sample
        target_rms = init_projection(model.llama_proj, probe, objective.embed.weight, cfg.init_scale)
    log(f"llama_proj ({cfg.projection}, {sum(p.numel() for p in model.llama_proj.parameters())} parameters) "
        f"initialised to image-token RMS {target_rms:.4f}")
    return objective


def _train(objective: Stage1Objective, parts: _Stage1Parts, training: _TrainingSet, rng: np.random.Generator,
           cfg: Stage1Config, run_log: Stage1Log, log: Callable[[str], None]) -> float:
    """``cfg.steps`` AdamW steps on random captions of random images; the loss curve, evaluation losses and timings
    go to ``run_log``. Returns the final running loss (an exponential average, weight 0.05)."""
    features, answers, eval_set = training.features, training.answers, training.eval_set
    optim = adamw(parts.params, cfg.lr, cfg.weight_decay)
    pad_id = int(parts.tokenizer.pad_token_id if parts.tokenizer.pad_token_id is not None
                 else parts.tokenizer.eos_token_id)
    started, running = time.perf_counter(), 0.0
    for step in range(cfg.steps):
        rows = rng.integers(0, len(answers), cfg.batch_size)
        picks = [answers[r][rng.integers(0, len(answers[r]))] for r in rows]
        targets, mask = pad_batch(picks, pad_id)
        for group in optim.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.min_lr, cfg.warmup_steps)
        image = objective.image_tokens(features[torch.from_numpy(rows).to(cfg.device)], cfg.train_queries)
        loss = objective.loss(image, targets.to(cfg.device), mask.to(cfg.device))
        clipped_step(optim, loss, parts.params, cfg.grad_clip)
        running = 0.95 * running + 0.05 * loss.item() if step else loss.item()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            elapsed = time.perf_counter() - started
            run_log.losses.append((step, round(running, 4)))
            log(f"step {step:5d}  loss {running:.4f}  lr {optim.param_groups[0]['lr']:.2e}  {elapsed:7.1f}s  "
                f"ETA {elapsed / (step + 1) * (cfg.steps - step - 1):6.0f}s")
        if eval_set is not None and ((step + 1) % cfg.eval_every == 0 or step == cfg.steps - 1):
            value = _eval_loss(objective, eval_set, cfg)
            run_log.eval_losses.append((step + 1, round(value, 4)))
            log(f"step {step + 1:5d}  {cfg.eval_split} loss {value:.4f} ({len(eval_set[0])} images)")
    run_log.seconds_train = round(time.perf_counter() - started, 1)
    run_log.seconds_per_step = round(run_log.seconds_train / cfg.steps, 2)
    return running


def _save_stage1(out_dir: Path, world_dir: Path, parts: _Stage1Parts, cfg: Stage1Config, command: str | None,
                 final_loss: float, run_log: Stage1Log) -> ModelSpec:
    """Freeze the model on the CPU, save the model folder (no LLM weights) and its ``train_log.json``; return the
    saved spec."""
    model = parts.model
    model.eval().cpu()
    for p in model.parameters():
        p.requires_grad_(False)
    spec = ModelSpec(architecture=model.config, template=parts.template.name, instruction=cfg.instruction,
                     answer_prefix=cfg.answer_prefix,
                     image_mean=parts.source_spec.image_mean, image_std=parts.source_spec.image_std,
                     llm_path=_stored_llm_ref(cfg.llm, parts.source.kind), max_new_tokens=cfg.max_new_tokens,
                     extra={"trained_on": Path(world_dir).name, "stage1": asdict(cfg)})
    save_minigpt4(model, None, spec, out_dir, include_llm=False)
    (Path(out_dir) / "train_log.json").write_text(json.dumps(
        {"command": command, "config": asdict(cfg), "final_loss": round(final_loss, 4), **asdict(run_log)},
        indent=2, sort_keys=True) + "\n")
    return spec


def stage1_command(out_dir: Path, cfg: Stage1Config, world_dir: Path | None = None) -> str:
    """The ``kneuron train`` command line that reproduces ``cfg`` (options that differ from the defaults, plus
    ``--llm``, ``--vision-from``, ``--projection``, ``--steps`` and ``--threads`` always)."""
    import shlex

    defaults = Stage1Config()
    flags = {"llm": "--llm", "vision_from": "--vision-from", "projection": "--projection",
             "patches_per_token": "--patches-per-token", "steps": "--steps",
             "threads": "--threads", "template": "--template", "batch_size": "--batch-size", "lr": "--lr",
             "init_scale": "--init-scale", "seed": "--seed", "device": "--device"}
    always = ("llm", "vision_from", "projection", "steps", "threads")
    parts = ["kneuron", "train", str(out_dir)]
    for key, flag in flags.items():
        value = getattr(cfg, key)
        if value is not None and (key in always or value != getattr(defaults, key)):
            parts += [flag, str(value)]
    if cfg.train_queries:
        parts.append("--train-queries")
    if world_dir is not None:
        parts += ["--world", str(world_dir)]
    return shlex.join(parts)


def _stored_llm_ref(ref: str, kind: str) -> str:
    """``llm_path`` to store: shortcuts and hub ids as given, paths absolute (a folder may move)."""
    from kneuron.engine.models.llm import SHORTCUTS

    return ref if ref in SHORTCUTS or kind == "hub" else str(Path(ref).expanduser().resolve())


def _eval_set(world_dir: Path, cfg: Stage1Config, model: MiniGPT4, preprocess: ImagePreprocessor, tokenizer: Any,
              stop_ids: list[int]) -> tuple[torch.Tensor, list[list[int]]] | None:
    """Features and first captions of the first ``cfg.eval_images`` images of ``cfg.eval_split`` (None if absent)."""
    if not cfg.eval_images or not cfg.eval_every:
        return None
    try:
        data = CocoDataset(world_dir, cfg.eval_split)
    except KneuronError:
        return None
    ids = data.image_ids()[:cfg.eval_images]
    if not ids:
        return None
    features = cache_features(model, load_images(data, ids, model.config.image_size), preprocess,
                              cfg.train_queries).to(cfg.device)
    answers = encode_answers(tokenizer, [data.captions(i)[:1] for i in ids], stop_ids)
    return features, [a[0] for a in answers]


@torch.no_grad()
def _eval_loss(objective: Stage1Objective, eval_set: tuple[torch.Tensor, list[list[int]]], cfg: Stage1Config
               ) -> float:
    """Token-weighted answer loss over the evaluation images (batches of ``cfg.batch_size``)."""
    features, answers = eval_set
    total, count = 0.0, 0
    for start in range(0, len(answers), cfg.batch_size):
        picks = answers[start:start + cfg.batch_size]
        targets, mask = pad_batch(picks, 0)
        image = objective.image_tokens(features[start:start + len(picks)], cfg.train_queries)
        n = int(mask.sum())
        total += float(objective.loss(image, targets.to(cfg.device), mask.to(cfg.device))) * n
        count += n
    return total / max(1, count)
