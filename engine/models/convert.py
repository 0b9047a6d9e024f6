"""Convert the official MiniGPT-4 checkpoints into a kneuron model folder (``kneuron convert``).

Inputs (official releases; nothing is downloaded here):

- ``eva_vit_g.pth``: the EVA ViT-g/14 state dict of the LAVIS/BLIP-2 release
  (``storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth``), keys *without*
  the ``visual_encoder.`` prefix (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
  ``blocks.{i}.{norm1,attn.qkv.weight,attn.q_bias,attn.v_bias,attn.proj.*,norm2,mlp.fc1.*,mlp.fc2.*}``).
- ``blip2_pretrained_flant5xxl.pth`` (Q-Former variant only; same LAVIS release): ``{"model": state_dict}``
  holding ``Qformer.*``, ``query_tokens`` and ``ln_vision.*`` (plus ``t5_proj.*`` etc., which MiniGPT-4 does
  not use and which are dropped). The patch (LLaMA-2) variant loads no Q-Former checkpoint, so its
  ``ln_vision`` keeps the default init (weight 1, bias 0), exactly as in the official code.
- ``pretrained_minigpt4*.pth`` (Vision-CAIR's MiniGPT-4 release: ``pretrained_minigpt4.pth`` 13B,
  ``prerained_minigpt4_7b.pth`` 7B, ``pretrained_minigpt4_llama2_7b.pth`` LLaMA-2): ``{"model": state_dict}``;
  only ``llama_proj.*`` is used (the file also holds buffers such as
  ``Qformer.bert.embeddings.position_ids``; they are listed and ignored).
- a Vicuna v0 / LLaMA-2-chat Hugging Face folder (``config.json``, weights, tokenizer).

Keys are renamed to the Hugging Face BLIP-2 layout used by `kneuron.engine.models.minigpt4.MiniGPT4` (`rename_vit`,
`rename_blip2`), sizes are inferred from tensor shapes, and every non-LLM weight is written to
``model.safetensors`` next to a ``kneuron_model.json`` whose ``llm_path`` points at the LLM folder. The
official code loads the two checkpoints with ``strict=False`` on top of the ViT (Q-Former checkpoint first,
then the MiniGPT-4 one); this converter follows the same order, so ``visual_encoder.*`` keys in the Q-Former
checkpoint (if any) override ``eva_vit_g.pth``, and it fails with one `KneuronError` line on any missing,
unexpected or mis-shaped key.

The module has one job: official checkpoint files in, one model folder out. Loading, key renaming, size
inference and the key check share the official key layout, so they stay in one file.
"""
from __future__ import annotations

import logging
import re
import shutil
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from kneuron.engine.errors import KneuronError
from kneuron.engine.models.minigpt4 import MiniGPT4, MiniGPT4Config, Variant
from kneuron.engine.models.minigpt4_adapter import SPEC_FILE, WEIGHTS_FILE, ModelSpec, load_state_strict
from kneuron.engine.models.prompts import get_template

VIT_PREFIX = "visual_encoder."
LN_VISION_EPS = 1e-5  # ln_vision is nn.LayerNorm with its default eps
VIT_LAYER_NORM_EPS = 1e-6  # EVA ViT-g blocks: partial(nn.LayerNorm, eps=1e-6)
QFORMER_LAYER_NORM_EPS = 1e-12  # BERT
EVA_G_WIDTH, EVA_G_HEAD_DIM = 1408, 88  # EVA ViT-g: 16 heads of 88
BERT_HEAD_DIM = 64
LLM_FOLDER = "language_model"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja")
VARIANTS = ("auto", "qformer", "patch")

# ViT keys the official EVA ViT-g module has no parameter for (loaded with strict=False, so silently unused).
_VIT_UNUSED = re.compile(r"^(norm|fc_norm|head|lm_head|rel_pos_bias)\.|\.relative_position_(bias_table|index)$")
# Q-Former text-side keys MiniGPT-4 sets to None (text FFN, word/position embeddings, LM head) and buffers.
_QFORMER_TEXT_SIDE = re.compile(
    r"^Qformer\.cls\.|^Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\.|position_ids$"
    r"|^Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.")
_VIT_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"^cls_token$", "embeddings.class_embedding"),
    (r"^pos_embed$", "embeddings.position_embedding"),
    (r"^patch_embed\.proj\.(weight|bias)$", r"embeddings.patch_embedding.\1"),
    (r"^blocks\.(\d+)\.norm([12])\.(weight|bias)$", r"encoder.layers.\1.layer_norm\2.\3"),
    (r"^blocks\.(\d+)\.attn\.qkv\.weight$", r"encoder.layers.\1.self_attn.qkv.weight"),
    (r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"^blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)$", r"encoder.layers.\1.mlp.\2.\3"),
))
_QFORMER_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple((re.compile(p), r) for p, r in (
    (r"^Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)$", r"qformer.layernorm.\1"),
    (r"^Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)$",
     r"qformer.encoder.layer.\1.\2.attention.\3.\4"),
    (r"^Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)$",
     r"qformer.encoder.layer.\1.\2.output.\3.\4"),
    (r"^Qformer\.bert\.encoder\.layer\.(\d+)\.intermediate_query\.dense\.(weight|bias)$",
     r"qformer.encoder.layer.\1.intermediate_query.dense.\2"),
    (r"^Qformer\.bert\.encoder\.layer\.(\d+)\.output_query\.(dense|LayerNorm)\.(weight|bias)$",
     r"qformer.encoder.layer.\1.output_query.\2.\3"),
    (r"^query_tokens$", "query_tokens"),
    (r"^ln_vision\.(weight|bias)$", r"vision_model.post_layernorm.\1"),
))

Log = Callable[[str], None]
logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------- reading checkpoints
def _show(keys: Iterable[str], n: int = 5) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_checkpoint(path: Path, what: str, log: Log | None = None) -> dict[str, Any]:
    """``torch.load`` a trusted official ``.pth`` on CPU; return the dict it holds.

    Tries ``weights_only=True`` first. The official files are trusted releases (LAVIS / Vision-CAIR), so when
    they hold pickled objects that the safe loader refuses (e.g. a training config), it falls back to
    ``weights_only=False``. Never point this at an untrusted file.
    """
    log = log or logger.info
    if not path.is_file():
        raise KneuronError(f"{what} checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as safe_exc:  # noqa: BLE001 - any refusal of the safe loader -> trusted fallback
        try:
            obj = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - corrupt / not a torch file
            first = (str(exc) or type(exc).__name__).splitlines()[0]
            raise KneuronError(f"cannot read {what} checkpoint {path}: {first}") from None
        log(f"{path.name}: safe loading refused ({type(safe_exc).__name__}); loaded as a trusted official file")
    if not isinstance(obj, dict):
        raise KneuronError(f"{what} checkpoint {path} holds a {type(obj).__name__}, not a dict of weights")
    return obj


def model_entry(obj: dict[str, Any], path: Path, what: str) -> dict[str, Any]:
    """The ``["model"]`` state dict of a LAVIS / MiniGPT-4 training checkpoint."""
    state = obj.get("model")
    if not isinstance(state, dict):
        raise KneuronError(f"{what} checkpoint {path} has no 'model' state dict "
                           f"(top-level keys: {_show(map(str, obj)) or 'none'})")
    return state


def tensors_only(state: dict[str, Any], path: Path, log: Log) -> dict[str, torch.Tensor]:
    """Drop (and report) entries that are not tensors."""
    other = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if other:
        log(f"{path.name}: ignoring {len(other)} non-tensor entries: {_show(other)}")
    return {str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}


# ---------------------------------------------------------------------- renaming (official keys -> HF BLIP-2 layout)
def rename_vit(state: dict[str, torch.Tensor], prefix: str = VIT_PREFIX
               ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``visual_encoder.*`` EVA keys -> ``vision_model.*`` HF keys. Returns ``(renamed, unused)``.

    ``attn.q_bias``/``attn.v_bias`` become one ``self_attn.qkv.bias = cat(q, zeros_like(v), v)`` ``[3*width]``.
    Keys the official ViT-g has no parameter for (final norm/head, relative position bias) are returned as
    unused; any other unknown key keeps its name and so shows up as unexpected.
    """
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    biases: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        bias = re.match(r"^blocks\.(\d+)\.attn\.([qv])_bias$", name)
        if bias:
            biases.setdefault(bias.group(1), {})[bias.group(2)] = value
            continue
        if _VIT_UNUSED.search(name):
            unused.append(key)
            continue
        for pattern, repl in _VIT_RULES:
            if pattern.match(name):
                out["vision_model." + pattern.sub(repl, name)] = value
                break
        else:
            out[key] = value  # unknown: reported as unexpected by the strict check
    for layer, qv in biases.items():
        if set(qv) == {"q", "v"}:
            out[f"vision_model.encoder.layers.{layer}.self_attn.qkv.bias"] = torch.cat(
                (qv["q"], torch.zeros_like(qv["v"]), qv["v"]))
        else:  # only one of the two: leave it under its own name -> unexpected, and qkv.bias -> missing
            for which, value in qv.items():
                out[f"{prefix}blocks.{layer}.attn.{which}_bias"] = value
    return out, unused


def rename_blip2(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """BLIP-2 ``["model"]`` keys -> HF keys. Returns ``(renamed, dropped)``.

    Kept: ``Qformer.bert.*`` query-side weights, ``query_tokens``, ``ln_vision.*`` and (official override order)
    ``visual_encoder.*``. Dropped: the text side (``Qformer.cls.*``, word/position embeddings, per-layer
    ``intermediate``/``output``), ``position_ids`` buffers and every non-MiniGPT-4 module (``t5_proj``,
    ``t5_model``, ...). Unknown ``Qformer.bert.*`` keys keep their name and show up as unexpected.
    """
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    vit = {k: v for k, v in state.items() if k.startswith(VIT_PREFIX)}
    if vit:
        renamed, unused = rename_vit(vit)
        out.update(renamed)
        dropped.extend(unused)
    for key, value in state.items():
        if key.startswith(VIT_PREFIX):
            continue
        if _QFORMER_TEXT_SIDE.search(key):
            dropped.append(key)
            continue
        for pattern, repl in _QFORMER_RULES:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            if key.startswith("Qformer."):
                out[key] = value  # unknown Q-Former key: unexpected
            else:
                dropped.append(key)  # t5_proj.*, t5_model.*, ...: not part of MiniGPT-4
    return out, dropped


# ---------------------------------------------------------------------- sizes from shapes
def default_vision_heads(width: int) -> int:
    """Attention heads of an EVA ViT: head dim 88 when ``width`` is a multiple of 88 (ViT-g: 1408 -> 16), else
    64 (ViT-L/B). Raise when neither divides; pass ``vision_heads`` then."""
    for head_dim in (EVA_G_HEAD_DIM, BERT_HEAD_DIM):
        if width % head_dim == 0:
            return width // head_dim
    raise KneuronError(f"cannot infer ViT attention heads for width {width} (not a multiple of 88 or 64); "
                       f"pass --vision-heads")


def default_qformer_heads(width: int) -> int:
    """Q-Former heads: BERT head dim 64 (BERT-base 768 -> 12). Raise when 64 does not divide ``width``."""
    if width % BERT_HEAD_DIM:
        raise KneuronError(f"cannot infer Q-Former attention heads for width {width} (not a multiple of 64); "
                           f"pass --qformer-heads")
    return width // BERT_HEAD_DIM


def _layer_indices(state: dict[str, torch.Tensor], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := regex.match(k))})


def _need(state: dict[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in state:
        raise KneuronError(f"{what}: missing key {key} (cannot infer the architecture)")
    return state[key]


def infer_vision_config(state: dict[str, torch.Tensor], heads: int | None = None) -> dict[str, Any]:
    """`Blip2VisionConfig` kwargs from renamed ViT weights.

    width: ``class_embedding [1, 1, W]``; patch size: ``patch_embedding.weight [W, 3, P, P]``; image size:
    ``sqrt(position_embedding.shape[1] - 1) * P``; layers: number of ``layers.{i}``; MLP size: ``fc1.weight``
    rows; heads: ``heads`` or `default_vision_heads`.
    """
    what = "EVA ViT checkpoint"
    cls = _need(state, "vision_model.embeddings.class_embedding", what)
    width = int(cls.shape[-1])
    patch = _need(state, "vision_model.embeddings.patch_embedding.weight", what)
    patch_size = int(patch.shape[-1])
    n_pos = int(_need(state, "vision_model.embeddings.position_embedding", what).shape[1]) - 1
    grid = int(round(n_pos ** 0.5))
    if grid * grid != n_pos:
        raise KneuronError(f"{what}: pos_embed has {n_pos} patch positions, not a square grid")
    layers = _layer_indices(state, r"^vision_model\.encoder\.layers\.(\d+)\.")
    if not layers:
        raise KneuronError(f"{what}: no blocks.{{i}} weights found")
    mlp = int(_need(state, "vision_model.encoder.layers.0.mlp.fc1.weight", what).shape[0])
    heads = heads or default_vision_heads(width)
    if width % heads:
        raise KneuronError(f"ViT width {width} is not divisible by {heads} heads")
    return dict(hidden_size=width, intermediate_size=mlp, num_hidden_layers=max(layers) + 1,
                num_attention_heads=heads, image_size=grid * patch_size, patch_size=patch_size, qkv_bias=True,
                layer_norm_eps=VIT_LAYER_NORM_EPS, hidden_act="gelu")


def infer_qformer_config(state: dict[str, torch.Tensor], heads: int | None = None) -> tuple[dict[str, Any], int]:
    """`Blip2QFormerConfig` kwargs and the number of query tokens from renamed Q-Former weights.

    width: ``layernorm.weight``; layers: ``layer.{i}``; cross-attention frequency: the spacing of the layers
    that have ``crossattention`` (must be ``0, f, 2f, ...``); encoder width: cross ``key.weight`` columns;
    FFN size: ``intermediate_query.dense.weight`` rows; queries: ``query_tokens [1, Q, width]``.
    """
    what = "Q-Former checkpoint"
    width = int(_need(state, "qformer.layernorm.weight", what).shape[0])
    queries = int(_need(state, "query_tokens", what).shape[1])
    layers = _layer_indices(state, r"^qformer\.encoder\.layer\.(\d+)\.")
    cross = _layer_indices(state, r"^qformer\.encoder\.layer\.(\d+)\.crossattention\.")
    if not layers or not cross:
        raise KneuronError(f"{what}: no Qformer.bert.encoder.layer.{{i}} "
                           f"{'crossattention ' if layers else ''}weights found")
    n_layers = max(layers) + 1
    frequency = cross[1] - cross[0] if len(cross) > 1 else n_layers
    if cross != list(range(0, n_layers, frequency)):
        raise KneuronError(f"{what}: cross-attention on layers {cross} is not every k-th layer from 0")
    encoder_width = int(_need(state, f"qformer.encoder.layer.{cross[0]}.crossattention.attention.key.weight",
                              what).shape[1])
    d_ff = int(_need(state, "qformer.encoder.layer.0.intermediate_query.dense.weight", what).shape[0])
    heads = heads or default_qformer_heads(width)
    if width % heads:
        raise KneuronError(f"Q-Former width {width} is not divisible by {heads} heads")
    return dict(hidden_size=width, num_hidden_layers=n_layers, num_attention_heads=heads, intermediate_size=d_ff,
                encoder_hidden_size=encoder_width, cross_attention_frequency=frequency,
                layer_norm_eps=QFORMER_LAYER_NORM_EPS, hidden_act="gelu"), queries


def detect_variant(proj_in: int, vision_width: int, n_patches: int) -> tuple[Variant, int]:
    """``(variant, patches_per_token)`` from ``llama_proj``'s input width.

    ``proj_in = k * vision_width`` with ``k > 1`` dividing the patch count -> ``patch`` (official LLaMA-2: 5632 =
    4 * 1408); anything else -> ``qformer`` (official Vicuna: 768 = the Q-Former width).
    """
    k = proj_in // vision_width
    if proj_in % vision_width == 0 and k > 1 and n_patches % k == 0:
        return "patch", k
    return "qformer", 4


# ---------------------------------------------------------------------- tokenizer / LLM
def _load_llm_side(llm: Path) -> Any:
    from transformers import AutoConfig, AutoTokenizer, LlamaConfig

    if not llm.is_dir():
        raise KneuronError(f"LLM folder not found: {llm}")
    if not (llm / "config.json").is_file():
        raise KneuronError(f"LLM folder has no config.json (need a Hugging Face Vicuna/LLaMA folder): {llm}")
    try:
        config = AutoConfig.from_pretrained(llm)
    except Exception as exc:  # noqa: BLE001
        raise KneuronError(f"unreadable LLM config {llm / 'config.json'}: {str(exc).splitlines()[0]}") from None
    if not isinstance(config, LlamaConfig):
        raise KneuronError(f"LLM {llm} is a {config.model_type!r} model; MiniGPT-4 needs a LLaMA/Vicuna folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(llm)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc) or type(exc).__name__).splitlines()[0]
        raise KneuronError(f"cannot load the tokenizer of {llm}: {first}") from None
    return config, tokenizer


def stop_token_ids(tokenizer: Any, stop_strings: Iterable[str]) -> list[int]:
    """EOS plus every stop string that is a single vocabulary token (Vicuna-v0: ``</s>`` 2, ``###`` 835).

    Looked up as a vocabulary *piece* (``convert_tokens_to_ids``), not by encoding text, because a
    sentencepiece encode of ``"###"`` would give ``"▁###"``. Multi-token stops (``##`` + ``#``) are left to
    the text post-processing (`PromptTemplate.clean_answer`).
    """
    if tokenizer.eos_token_id is None:
        raise KneuronError("the LLM tokenizer has no EOS token")
    ids = [int(tokenizer.eos_token_id)]
    for stop in stop_strings:
        tid = tokenizer.convert_tokens_to_ids(stop)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid not in ids:
            ids.append(tid)
    return ids


# ---------------------------------------------------------------------- conversion
class _Sources(NamedTuple):
    """The converter's inputs: the three official checkpoints (``qformer`` None for the patch variant) and the
    LLM folder (absolute)."""

    eva_vit: Path
    qformer: Path | None
    minigpt4: Path
    llm: Path


def convert_official(eva_vit: Path, qformer: Path | None, minigpt4: Path, llm: Path, out: Path,
                     variant: str = "auto", copy_llm: bool = False, dtype: str = "float16",
                     vision_heads: int | None = None, qformer_heads: int | None = None,
                     log: Log | None = None) -> Path:
    """Convert official MiniGPT-4 checkpoints into a kneuron model folder ``out``; returns ``out``.

    ``variant``: ``"qformer"`` (Vicuna-v0), ``"patch"`` (LLaMA-2) or ``"auto"`` (from ``llama_proj``'s input
    width, see `detect_variant`). ``qformer`` may be None for the patch variant. ``copy_llm`` saves the LLM into
    ``out/language_model`` (``save_pretrained`` in ``dtype``); otherwise ``llm_path`` is the absolute LLM
    folder. ``dtype`` (float16 | float32 | bfloat16) is the dtype of the saved non-LLM weights (and of the
    copied LLM). ``vision_heads``/``qformer_heads`` override the head-count rules (`default_vision_heads`,
    `default_qformer_heads`). ``log`` receives progress lines (ignored keys, detected sizes; default: this
    module's logger at INFO).

    The ``.pth`` files are loaded with ``weights_only=True`` and fall back to ``weights_only=False`` only
    when that fails: they are trusted official releases. Raises `KneuronError` (one line) on a wrong path, a
    file that is not a checkpoint dict, or any missing / unexpected / mis-shaped key.
    """
    log = log or logger.info
    sources = _Sources(Path(eva_vit), Path(qformer) if qformer is not None else None, Path(minigpt4),
                       Path(llm).resolve())
    out = Path(out)
    torch_dtype = _check_arguments(sources, out, variant, dtype)
    llm_config, tokenizer = _load_llm_side(sources.llm)
    proj = _load_projection(sources.minigpt4, log)
    # ViT (+ Q-Former checkpoint on top, as the official strict=False loading order does)
    state = _load_vit(sources.eva_vit, log)
    vision = infer_vision_config(state, vision_heads)
    chosen, patches_per_token = _choose_variant(variant, proj, vision, log)
    if chosen == "qformer":
        qformer_config, n_queries = _add_qformer(state, sources, qformer_heads, log)
    else:
        qformer_config, n_queries = None, 32
        _add_default_ln_vision(state, sources.qformer, vision["hidden_size"], log)
    state.update(proj)

    config = MiniGPT4Config(variant=chosen, vision=vision, qformer=qformer_config, num_query_tokens=n_queries,
                            llm=None, patches_per_token=patches_per_token, ln_vision_eps=LN_VISION_EPS)
    _check_keys(config, llm_config, state, f"{sources.eva_vit} + {sources.qformer or '-'} + {sources.minigpt4}")
    log(_describe(config))
    _write_folder(out, state, config, sources, llm_config, tokenizer, torch_dtype, copy_llm, log)
    return out


def _check_arguments(sources: _Sources, out: Path, variant: str, dtype: str) -> torch.dtype:
    """The ``torch.dtype`` of ``dtype`` once ``variant``, ``dtype``, the checkpoint files and ``out`` are valid
    (`KneuronError` otherwise); the LLM folder is checked when it is loaded."""
    from kneuron.engine.models import resolve_dtype

    if variant not in VARIANTS:
        raise KneuronError(f"unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
    torch_dtype = resolve_dtype(dtype)
    if torch_dtype is None:
        raise KneuronError(f"unknown dtype {dtype!r}; use float16, float32 or bfloat16")
    checkpoints = ((sources.eva_vit, "EVA ViT"), (sources.minigpt4, "MiniGPT-4"))
    for path, what in checkpoints + (((sources.qformer, "Q-Former"),) if sources.qformer else ()):
        if not path.is_file():
            raise KneuronError(f"{what} checkpoint not found: {path}")
    if out.exists() and not out.is_dir():
        raise KneuronError(f"output path exists and is not a folder: {out}")
    return torch_dtype


def _load_projection(minigpt4: Path, log: Log) -> dict[str, torch.Tensor]:
    """The ``llama_proj.*`` tensors of the MiniGPT-4 checkpoint (its other keys are logged and dropped)."""
    mg4_state = tensors_only(model_entry(load_checkpoint(minigpt4, "MiniGPT-4", log), minigpt4, "MiniGPT-4"),
                             minigpt4, log)
    proj = {k: v for k, v in mg4_state.items() if k.startswith("llama_proj.")}
    ignored = sorted(set(mg4_state) - set(proj))
    if ignored:
        log(f"{minigpt4.name}: using llama_proj.* only; ignoring {len(ignored)} keys: {_show(ignored)}")
    if "llama_proj.weight" not in proj:
        raise KneuronError(f"MiniGPT-4 checkpoint {minigpt4} has no llama_proj.weight "
                           f"(keys: {_show(mg4_state) or 'none'})")
    return proj


def _load_vit(eva_vit: Path, log: Log) -> dict[str, torch.Tensor]:
    """The EVA ViT checkpoint renamed to ``vision_model.*`` (`rename_vit`; unused keys are logged and dropped)."""
    raw_vit = load_checkpoint(eva_vit, "EVA ViT", log)
    if isinstance(raw_vit.get("model"), dict):
        raw_vit = raw_vit["model"]
    raw_vit = tensors_only(raw_vit, eva_vit, log)
    state, unused = rename_vit({VIT_PREFIX + k if not k.startswith(VIT_PREFIX) else k: v
                                for k, v in raw_vit.items()})
    del raw_vit
    if unused:
        log(f"{eva_vit.name}: ignoring {len(unused)} keys the official ViT-g does not use: {_show(unused)}")
    return state


def _choose_variant(variant: str, proj: dict[str, torch.Tensor], vision: dict[str, Any], log: Log
                    ) -> tuple[Variant, int]:
    """``(variant, patches_per_token)``: ``variant`` as asked, or detected from ``llama_proj`` when ``"auto"``."""
    n_patches = (vision["image_size"] // vision["patch_size"]) ** 2
    proj_in = int(proj["llama_proj.weight"].shape[1])
    detected, patches_per_token = detect_variant(proj_in, vision["hidden_size"], n_patches)
    chosen: Variant = detected if variant == "auto" else "patch" if variant == "patch" else "qformer"
    if variant == "auto":
        log(f"variant: {chosen} (llama_proj input width {proj_in}, ViT width {vision['hidden_size']})")
    elif variant == "patch" and detected != "patch":
        patches_per_token = 4  # official grouping; the strict check reports llama_proj's shape
    return chosen, patches_per_token


def _add_qformer(state: dict[str, torch.Tensor], sources: _Sources, heads: int | None, log: Log
                 ) -> tuple[dict[str, Any], int]:
    """Add the BLIP-2 checkpoint's renamed keys to ``state`` (its ViT keys override, as officially); return the
    Q-Former config kwargs and the number of query tokens (`infer_qformer_config`)."""
    qformer = sources.qformer
    if qformer is None:
        raise KneuronError("the Q-Former (Vicuna-v0) variant needs the BLIP-2 Q-Former checkpoint "
                           "blip2_pretrained_flant5xxl.pth (--qformer)")
    blip2 = tensors_only(model_entry(load_checkpoint(qformer, "Q-Former", log), qformer, "Q-Former"), qformer, log)
    renamed, dropped = rename_blip2(blip2)
    del blip2
    log(f"{qformer.name}: using {len(renamed)} keys; dropping {len(dropped)} "
        f"(text side, buffers, T5 projection): {_show(dropped, 3)}")
    overrides = sorted(k for k in renamed if k.startswith("vision_model.") and "post_layernorm" not in k)
    if overrides:
        log(f"{qformer.name}: {len(overrides)} ViT keys override {sources.eva_vit.name} (official loading order)")
    state.update(renamed)
    return infer_qformer_config(state, heads)


def _add_default_ln_vision(state: dict[str, torch.Tensor], qformer: Path | None, width: int, log: Log) -> None:
    """Patch variant: ``ln_vision`` at its default init (weight 1, bias 0), as no Q-Former checkpoint is loaded."""
    if qformer is not None:
        log(f"patch variant: ignoring {qformer} (the official LLaMA-2 model loads no Q-Former checkpoint)")
    state["vision_model.post_layernorm.weight"] = torch.ones(width)
    state["vision_model.post_layernorm.bias"] = torch.zeros(width)


def _describe(config: MiniGPT4Config) -> str:
    """One log line of the converted architecture's sizes."""
    vision, qformer = config.vision, config.qformer
    return (f"vision: {vision['num_hidden_layers']} layers, width {vision['hidden_size']}, "
            f"{vision['num_attention_heads']} heads, {vision['image_size']} px / {vision['patch_size']} px patches; "
            + (f"Q-Former: {qformer['num_hidden_layers']} layers, width {qformer['hidden_size']}, "
               f"{config.num_query_tokens} queries" if qformer else f"patch grouping: {config.patches_per_token}")
            + f"; {config.n_image_tokens} image tokens")


def _write_folder(out: Path, state: dict[str, torch.Tensor], config: MiniGPT4Config, sources: _Sources,
                  llm_config: Any, tokenizer: Any, torch_dtype: torch.dtype, copy_llm: bool, log: Log) -> None:
    """Write ``model.safetensors`` (emptying ``state``), the LLM copy if ``copy_llm``, then ``kneuron_model.json``."""
    out.mkdir(parents=True, exist_ok=True)
    n_weights = _save_weights(out / WEIGHTS_FILE, state, torch_dtype)
    llm_path = str(sources.llm)
    if copy_llm:
        llm_path = LLM_FOLDER
        _copy_llm(sources.llm, out / LLM_FOLDER, torch_dtype)
    template = "vicuna0" if config.variant == "qformer" else "llama2"
    config_eos = getattr(llm_config, "eos_token_id", None)
    if config_eos not in (None, tokenizer.eos_token_id):
        log(f"LLM config eos_token_id={config_eos} differs from the tokenizer's {tokenizer.eos_token_id}; "
            f"using the tokenizer's (passed explicitly at generation)")
    spec = ModelSpec(architecture=config, template=template,
                     stop_token_ids=stop_token_ids(tokenizer, get_template(template).stop_strings),
                     llm_path=llm_path,
                     extra={"converted_from": {"eva_vit": str(sources.eva_vit.resolve()),
                                               "qformer": str(sources.qformer.resolve()) if sources.qformer else None,
                                               "minigpt4": str(sources.minigpt4.resolve()), "llm": str(sources.llm)},
                            "weights_dtype": str(torch_dtype).removeprefix("torch.")})
    (out / SPEC_FILE).write_text(spec.to_json() + "\n")
    log(f"wrote {out / WEIGHTS_FILE} ({n_weights} tensors) and {out / SPEC_FILE} (llm_path {llm_path})")


def _save_weights(path: Path, state: dict[str, torch.Tensor], torch_dtype: torch.dtype) -> int:
    """Save ``state`` (floating tensors cast to ``torch_dtype``) as safetensors, popping it as it goes (at most one
    extra tensor alive at full size); returns the number of tensors written."""
    from safetensors.torch import save_file

    weights: dict[str, torch.Tensor] = {}
    for key in sorted(state):
        value = state.pop(key)
        weights[key] = (value.to(torch_dtype) if value.is_floating_point() else value).contiguous().clone()
    save_file(weights, str(path), metadata={"format": "pt"})
    return len(weights)


def _check_keys(config: MiniGPT4Config, llm_config: Any, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict key/shape check of the non-LLM weights against a meta-device `MiniGPT4` (allocates nothing)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = MiniGPT4(config, language_model=LlamaForCausalLM(llm_config))
    with warnings.catch_warnings():  # loading into meta tensors is a no-op copy; only the check matters
        warnings.filterwarnings("ignore", message=".*non-meta parameter.*")
        load_state_strict(model, state, source, ignore_prefix="language_model.")


def _copy_llm(llm: Path, target: Path, dtype: torch.dtype) -> None:
    """Save the LLM (in ``dtype``) and copy its tokenizer files verbatim into ``target``."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(llm, dtype=dtype)
    model.save_pretrained(target)
    del model
    for name in TOKENIZER_FILES:
        if (llm / name).is_file():
            shutil.copy2(llm / name, target / name)
