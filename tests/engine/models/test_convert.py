"""`kneuron convert`: tiny checkpoints with the official (LAVIS / Vision-CAIR) key names and layouts are
converted, loaded with `load_model`, and compared with a reference forward written here from the original
state dicts in plain torch ops."""
from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from kneuron.cli.main import group
from kneuron.engine.errors import KneuronError
from kneuron.engine.models import load_model
from kneuron.engine.models.convert import convert_official, default_qformer_heads, default_vision_heads
from tests.helpers.tiny_models import tiny_tokenizer

IMAGE, PATCH, WIDTH, VIT_LAYERS, VIT_HEADS, VIT_MLP = 32, 8, 32, 2, 4, 80  # 4x4 = 16 patches
Q_WIDTH, Q_LAYERS, Q_HEADS, Q_FF, N_QUERY, CROSS_EVERY = 48, 3, 4, 96, 6, 2  # cross-attention on layers 0, 2
D_LLM = 64


def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
    return torch.randn(*shape) * scale


def norm_params(prefix: str, width: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1 + rand(width, scale=0.1), f"{prefix}.bias": rand(width, scale=0.1)}


def linear_params(prefix: str, n_out: int, n_in: int, bias: bool = True) -> dict[str, torch.Tensor]:
    params = {f"{prefix}.weight": rand(n_out, n_in)}
    if bias:
        params[f"{prefix}.bias"] = rand(n_out, scale=0.1)
    return params


def eva_vit_state() -> dict[str, torch.Tensor]:
    """`eva_vit_g.pth` layout: no `visual_encoder.` prefix, q_bias/v_bias, no final norm."""
    n = (IMAGE // PATCH) ** 2
    s = {"cls_token": rand(1, 1, WIDTH), "pos_embed": rand(1, n + 1, WIDTH),
         "patch_embed.proj.weight": rand(WIDTH, 3, PATCH, PATCH, scale=0.05),
         "patch_embed.proj.bias": rand(WIDTH, scale=0.1)}
    for i in range(VIT_LAYERS):
        b = f"blocks.{i}"
        s |= norm_params(f"{b}.norm1", WIDTH) | norm_params(f"{b}.norm2", WIDTH)
        s |= linear_params(f"{b}.attn.qkv", 3 * WIDTH, WIDTH, bias=False)
        s[f"{b}.attn.q_bias"] = rand(WIDTH, scale=0.1)
        s[f"{b}.attn.v_bias"] = rand(WIDTH, scale=0.1)
        s |= linear_params(f"{b}.attn.proj", WIDTH, WIDTH)
        s |= linear_params(f"{b}.mlp.fc1", VIT_MLP, WIDTH) | linear_params(f"{b}.mlp.fc2", WIDTH, VIT_MLP)
    return s


def blip2_state() -> dict[str, torch.Tensor]:
    """`blip2_pretrained_flant5xxl.pth` ['model'] layout, including text-side keys MiniGPT-4 drops."""
    bert = "Qformer.bert"
    s = {"query_tokens": rand(1, N_QUERY, Q_WIDTH, scale=0.5), **norm_params("ln_vision", WIDTH),
         **norm_params(f"{bert}.embeddings.LayerNorm", Q_WIDTH),
         f"{bert}.embeddings.word_embeddings.weight": rand(30, Q_WIDTH),
         f"{bert}.embeddings.position_embeddings.weight": rand(40, Q_WIDTH),
         f"{bert}.embeddings.position_ids": torch.arange(40)[None],
         **linear_params("Qformer.cls.predictions.transform.dense", Q_WIDTH, Q_WIDTH),
         "Qformer.cls.predictions.bias": rand(30),
         **linear_params("t5_proj", 20, Q_WIDTH)}
    for i in range(Q_LAYERS):
        layer = f"{bert}.encoder.layer.{i}"
        kinds = [("attention", Q_WIDTH)] + ([("crossattention", WIDTH)] if i % CROSS_EVERY == 0 else [])
        for kind, kv_width in kinds:
            s |= linear_params(f"{layer}.{kind}.self.query", Q_WIDTH, Q_WIDTH)
            s |= linear_params(f"{layer}.{kind}.self.key", Q_WIDTH, kv_width)
            s |= linear_params(f"{layer}.{kind}.self.value", Q_WIDTH, kv_width)
            s |= linear_params(f"{layer}.{kind}.output.dense", Q_WIDTH, Q_WIDTH)
            s |= norm_params(f"{layer}.{kind}.output.LayerNorm", Q_WIDTH)
        s |= linear_params(f"{layer}.intermediate_query.dense", Q_FF, Q_WIDTH)
        s |= linear_params(f"{layer}.output_query.dense", Q_WIDTH, Q_FF)
        s |= norm_params(f"{layer}.output_query.LayerNorm", Q_WIDTH)
        s |= linear_params(f"{layer}.intermediate.dense", Q_FF, Q_WIDTH)  # text FFN: dropped
        s |= linear_params(f"{layer}.output.dense", Q_WIDTH, Q_FF)
        s |= norm_params(f"{layer}.output.LayerNorm", Q_WIDTH)
    return s


def minigpt4_ckpt(proj_in: int) -> dict:
    """`pretrained_minigpt4*.pth`: llama_proj plus a buffer and training extras."""
    return {"model": {**linear_params("llama_proj", D_LLM, proj_in),
                      "Qformer.bert.embeddings.position_ids": torch.arange(40)[None]},
            "epoch": 3, "config": {"run": {"lr": 1e-4}}}


def write_llm(folder: Path) -> Path:
    torch.manual_seed(7)
    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=D_LLM, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      pad_token_id=0, bos_token_id=0, eos_token_id=1,  # wrong on purpose, like Vision-CAIR's
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("official")
    paths = {"eva": root / "eva_vit_g.pth", "blip2": root / "blip2_pretrained_flant5xxl.pth",
             "mg4": root / "pretrained_minigpt4.pth", "mg4_llama2": root / "pretrained_minigpt4_llama2_7b.pth",
             "llm": write_llm(root / "vicuna"), "root": root}
    torch.save(eva_vit_state(), paths["eva"])
    torch.save({"model": blip2_state(), "epoch": 9}, paths["blip2"])
    torch.save(minigpt4_ckpt(Q_WIDTH), paths["mg4"])
    llama2 = minigpt4_ckpt(4 * WIDTH)
    llama2["args"] = types.SimpleNamespace(seed=42)  # refused by weights_only=True -> trusted fallback
    torch.save(llama2, paths["mg4_llama2"])
    return paths


def heads_first(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    q, k, v = (heads_first(t, heads) for t in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1)
    out = weights @ v
    return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)


def ref_vit(s: dict, ln_vision: dict, pixels: torch.Tensor) -> torch.Tensor:
    """EVA ViT: pre-norm blocks, qkv with q/v biases, GELU MLP, no final norm; then ln_vision (eps 1e-5)."""
    x = F.conv2d(pixels, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([s["cls_token"].expand(x.shape[0], -1, -1), x], 1) + s["pos_embed"]
    for i in range(VIT_LAYERS):
        p = {k.removeprefix(f"blocks.{i}."): v for k, v in s.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (WIDTH,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        qkv = h @ p["attn.qkv.weight"].T
        q, k, v = qkv.split(WIDTH, dim=-1)
        a = attention(q + p["attn.q_bias"], k, v + p["attn.v_bias"], VIT_HEADS)
        x = x + a @ p["attn.proj.weight"].T + p["attn.proj.bias"]
        h = F.layer_norm(x, (WIDTH,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        h = F.gelu(h @ p["mlp.fc1.weight"].T + p["mlp.fc1.bias"])
        x = x + h @ p["mlp.fc2.weight"].T + p["mlp.fc2.bias"]
    return F.layer_norm(x, (WIDTH,), ln_vision["weight"], ln_vision["bias"], eps=1e-5)


def ref_qformer(s: dict, image: torch.Tensor) -> torch.Tensor:
    """BERT-style Q-Former over the queries only: LN -> per layer self-attn (+cross-attn) + query FFN."""
    def lin(x, name):
        return x @ s[f"{name}.weight"].T + s[f"{name}.bias"]

    def ln(x, name):
        return F.layer_norm(x, (Q_WIDTH,), s[f"{name}.weight"], s[f"{name}.bias"], eps=1e-12)

    bert = "Qformer.bert"
    x = ln(s["query_tokens"].expand(image.shape[0], -1, -1), f"{bert}.embeddings.LayerNorm")
    for i in range(Q_LAYERS):
        layer = f"{bert}.encoder.layer.{i}"
        for kind, kv in (("attention", None), ("crossattention", image)):
            if f"{layer}.{kind}.self.query.weight" not in s:
                continue
            src = x if kv is None else kv
            a = attention(lin(x, f"{layer}.{kind}.self.query"), lin(src, f"{layer}.{kind}.self.key"),
                          lin(src, f"{layer}.{kind}.self.value"), Q_HEADS)
            x = ln(lin(a, f"{layer}.{kind}.output.dense") + x, f"{layer}.{kind}.output.LayerNorm")
        h = F.gelu(lin(x, f"{layer}.intermediate_query.dense"))
        x = ln(lin(h, f"{layer}.output_query.dense") + x, f"{layer}.output_query.LayerNorm")
    return x


def pixels(seed: int = 3) -> torch.Tensor:
    return torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(seed))


def convert(ckpts, out: Path, **kw) -> Path:
    kw = {"vision_heads": VIT_HEADS, "qformer_heads": Q_HEADS, "dtype": "float32", "log": lambda _: None} | kw
    return convert_official(kw.pop("eva", ckpts["eva"]), kw.pop("qformer", ckpts["blip2"]),
                            kw.pop("minigpt4", ckpts["mg4"]), kw.pop("llm", ckpts["llm"]), out, **kw)


def test_qformer_variant_matches_reference_forward(ckpts, tmp_path):
    out = convert(ckpts, tmp_path / "mg4")
    adapter = load_model(str(out))
    spec = adapter.spec
    assert spec.architecture.variant == "qformer" and spec.template == "vicuna0"
    assert spec.llm_path == str(ckpts["llm"].resolve())
    assert spec.architecture.qformer["cross_attention_frequency"] == CROSS_EVERY
    assert spec.architecture.vision["intermediate_size"] == VIT_MLP and adapter.n_image_tokens == N_QUERY
    assert adapter.model.vision_model.post_layernorm.eps == 1e-5  # ln_vision, not the ViT's 1e-6
    tok = adapter.tokenizer  # no tokenizer in out/: the loader falls back to the LLM folder
    assert not (out / "tokenizer.json").exists() and tok.get_vocab() == tiny_tokenizer().get_vocab()
    sep = tok.convert_tokens_to_ids("###")
    assert sep != tok.unk_token_id and spec.stop_token_ids == adapter.stop_token_ids == [3, sep]

    vit = torch.load(ckpts["eva"], weights_only=True)
    blip2 = torch.load(ckpts["blip2"], weights_only=True)["model"]
    mg4 = torch.load(ckpts["mg4"], weights_only=True)["model"]
    px = pixels()
    image = ref_vit(vit, {"weight": blip2["ln_vision.weight"], "bias": blip2["ln_vision.bias"]}, px)
    expected = ref_qformer(blip2, image) @ mg4["llama_proj.weight"].T + mg4["llama_proj.bias"]
    with torch.no_grad():
        got = adapter.model.encode_img(px)
        got_vit = adapter.model.vision_model(pixel_values=px).last_hidden_state
    assert got_vit.shape == image.shape and torch.allclose(got_vit, image, atol=1e-5, rtol=0)
    assert got.shape == (2, N_QUERY, D_LLM)
    assert (got - expected).abs().max() <= 1e-5

    ids = torch.tensor([[2, 5, 6, 7]])
    reference_llm = LlamaForCausalLM.from_pretrained(ckpts["llm"])
    with torch.no_grad():
        assert torch.equal(adapter.model.language_model(ids).logits, reference_llm(ids).logits)


def test_patch_variant_matches_reference_forward_and_copies_llm(ckpts, tmp_path):
    out = convert(ckpts, tmp_path / "mg4_llama2", qformer=None, minigpt4=ckpts["mg4_llama2"], copy_llm=True)
    adapter = load_model(str(out))
    spec = adapter.spec
    assert spec.architecture.variant == "patch" and spec.template == "llama2"
    assert spec.llm_path == "language_model" and (out / "language_model" / "config.json").is_file()
    assert spec.stop_token_ids == [3] and adapter.n_image_tokens == (IMAGE // PATCH) ** 2 // 4

    vit = torch.load(ckpts["eva"], weights_only=True)
    mg4 = torch.load(ckpts["mg4_llama2"], weights_only=False)["model"]
    px = pixels(5)
    image = ref_vit(vit, {"weight": torch.ones(WIDTH), "bias": torch.zeros(WIDTH)}, px)  # ln_vision default
    grouped = image[:, 1:].reshape(2, -1, 4 * WIDTH)  # drop CLS, 4 raster-consecutive patches per token
    expected = grouped @ mg4["llama_proj.weight"].T + mg4["llama_proj.bias"]
    with torch.no_grad():
        got = adapter.model.encode_img(px)
    assert got.shape == (2, 4, D_LLM) and (got - expected).abs().max() <= 1e-5
    ids = torch.tensor([[2, 5, 6]])
    with torch.no_grad():
        assert torch.equal(adapter.model.language_model(ids).logits,
                           LlamaForCausalLM.from_pretrained(ckpts["llm"])(ids).logits)


def test_default_dtype_is_float16(ckpts, tmp_path):
    out = convert(ckpts, tmp_path / "fp16", dtype="float16")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        assert all(f.get_tensor(k).dtype == torch.float16 for k in keys)
    assert "vision_model.encoder.layers.1.self_attn.qkv.bias" in keys
    assert not any(k.startswith("language_model.") or "word_embeddings" in k or ".intermediate." in k
                   for k in keys)


@pytest.fixture(scope="module")
def reference(ckpts, tmp_path_factory) -> dict[str, torch.Tensor]:
    """The weights of the default conversion (auto -> qformer variant, float32) of the official checkpoints."""
    return load_file(str(convert(ckpts, tmp_path_factory.mktemp("reference") / "mg4") / "model.safetensors"))


def weights_of(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def same_weights(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> bool:
    return got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)


def test_forced_qformer_variant_converts_without_detection(ckpts, reference, tmp_path):
    lines: list[str] = []
    out = convert(ckpts, tmp_path / "forced", variant="qformer", log=lines.append)
    assert lines == [  # no "variant: ..." line: nothing was detected
        "pretrained_minigpt4.pth: using llama_proj.* only; ignoring 1 keys: Qformer.bert.embeddings.position_ids",
        "blip2_pretrained_flant5xxl.pth: using 73 keys; dropping 26 (text side, buffers, T5 projection): "
        "Qformer.bert.embeddings.position_embeddings.weight, Qformer.bert.embeddings.position_ids, "
        "Qformer.bert.embeddings.word_embeddings.weight (+23 more)",
        "vision: 2 layers, width 32, 4 heads, 32 px / 8 px patches; Q-Former: 3 layers, width 48, 6 queries; "
        "6 image tokens",
        "LLM config eos_token_id=1 differs from the tokenizer's 3; using the tokenizer's (passed explicitly at "
        "generation)",
        f"wrote {out / 'model.safetensors'} (103 tensors) and {out / 'kneuron_model.json'} "
        f"(llm_path {ckpts['llm'].resolve()})"]
    spec = load_model(str(out)).spec
    assert (spec.architecture.variant, spec.template, spec.architecture.num_query_tokens) == ("qformer", "vicuna0",
                                                                                             N_QUERY)
    assert same_weights(weights_of(out), reference)  # what auto detection gives for this llama_proj

    # a LLaMA-2 (patch-shaped) llama_proj: auto would choose patch; forced qformer keeps it and the checks say why
    msg = one_line_error(lambda: convert(ckpts, tmp_path / "x", variant="qformer", minigpt4=ckpts["mg4_llama2"]))
    assert msg == (f"incompatible checkpoint {ckpts['eva']} + {ckpts['blip2']} + {ckpts['mg4_llama2']}: "
                   f"shape mismatch: llama_proj.weight ({D_LLM}, {4 * WIDTH})!=({D_LLM}, {Q_WIDTH})")
    msg = one_line_error(lambda: convert(ckpts, tmp_path / "y", variant="qformer", qformer=None,
                                         minigpt4=ckpts["mg4_llama2"]))
    assert msg == ("the Q-Former (Vicuna-v0) variant needs the BLIP-2 Q-Former checkpoint "
                   "blip2_pretrained_flant5xxl.pth (--qformer)")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("variant", ["auto", "patch"])
def test_patch_variant_keeps_the_detected_grouping_and_ignores_a_qformer_checkpoint(ckpts, tmp_path, variant):
    mg4 = tmp_path / "pretrained_minigpt4_k2.pth"  # llama_proj over 2 patches per token (not the official 4)
    torch.save(minigpt4_ckpt(2 * WIDTH), mg4)
    lines: list[str] = []
    out = convert(ckpts, tmp_path / "k2", variant=variant, minigpt4=mg4, log=lines.append)
    assert lines[:-2] == [
        "pretrained_minigpt4_k2.pth: using llama_proj.* only; ignoring 1 keys: Qformer.bert.embeddings.position_ids",
        *(["variant: patch (llama_proj input width 64, ViT width 32)"] if variant == "auto" else []),
        f"patch variant: ignoring {ckpts['blip2']} (the official LLaMA-2 model loads no Q-Former checkpoint)",
        "vision: 2 layers, width 32, 4 heads, 32 px / 8 px patches; patch grouping: 2; 8 image tokens"]
    adapter = load_model(str(out))
    assert adapter.spec.architecture.variant == "patch" and adapter.spec.template == "llama2"
    assert adapter.spec.architecture.patches_per_token == 2 and adapter.n_image_tokens == 8
    weights = weights_of(out)
    assert torch.equal(weights["vision_model.post_layernorm.weight"], torch.ones(WIDTH))  # not BLIP-2's ln_vision
    assert torch.equal(weights["vision_model.post_layernorm.bias"], torch.zeros(WIDTH))
    assert not any(k.startswith(("qformer.", "query_tokens")) for k in weights)

    proj = torch.load(mg4, weights_only=True)["model"]
    px = pixels(7)
    image = ref_vit(torch.load(ckpts["eva"], weights_only=True), {"weight": torch.ones(WIDTH),
                                                                 "bias": torch.zeros(WIDTH)}, px)
    expected = image[:, 1:].reshape(2, -1, 2 * WIDTH) @ proj["llama_proj.weight"].T + proj["llama_proj.bias"]
    with torch.no_grad():
        got = adapter.model.encode_img(px)
    assert got.shape == (2, 8, D_LLM) and (got - expected).abs().max() <= 1e-5


def test_wrapped_vit_checkpoint_with_unused_keys_converts_like_the_plain_one(ckpts, reference, tmp_path):
    vit = torch.load(ckpts["eva"], weights_only=True)
    extra = {"norm.weight": torch.ones(WIDTH), "head.weight": rand(10, WIDTH),  # not in the official ViT-g module
             "blocks.0.attn.relative_position_bias_table": rand(7, VIT_HEADS),
             "blocks.0.attn.relative_position_index": torch.zeros(17, 17, dtype=torch.long)}
    wrapped = tmp_path / "eva_wrapped.pth"
    torch.save({"model": {**vit, **extra, "note": "trained"}, "epoch": 1}, wrapped)
    lines: list[str] = []
    out = convert(ckpts, tmp_path / "wrapped", eva=wrapped, log=lines.append)
    assert "eva_wrapped.pth: ignoring 1 non-tensor entries: note" in lines
    assert ("eva_wrapped.pth: ignoring 4 keys the official ViT-g does not use: "
            "visual_encoder.blocks.0.attn.relative_position_bias_table, "
            "visual_encoder.blocks.0.attn.relative_position_index, visual_encoder.head.weight, "
            "visual_encoder.norm.weight") in lines
    assert same_weights(weights_of(out), reference)


def test_vit_keys_in_the_qformer_checkpoint_override_eva_vit(ckpts, reference, tmp_path):
    blip2 = torch.load(ckpts["blip2"], weights_only=True)
    new = {"cls_token": rand(1, 1, WIDTH), "blocks.1.mlp.fc2.bias": rand(WIDTH),
           "blocks.1.attn.q_bias": rand(WIDTH), "blocks.1.attn.v_bias": rand(WIDTH)}
    blip2["model"].update({f"visual_encoder.{k}": v for k, v in new.items()})
    path = tmp_path / "blip2_with_vit.pth"
    torch.save(blip2, path)
    lines: list[str] = []
    out = convert(ckpts, tmp_path / "override", qformer=path, log=lines.append)
    assert "blip2_with_vit.pth: 3 ViT keys override eva_vit_g.pth (official loading order)" in lines
    weights = weights_of(out)
    overridden = {"vision_model.embeddings.class_embedding": new["cls_token"],
                  "vision_model.encoder.layers.1.mlp.fc2.bias": new["blocks.1.mlp.fc2.bias"],
                  "vision_model.encoder.layers.1.self_attn.qkv.bias": torch.cat(
                      (new["blocks.1.attn.q_bias"], torch.zeros(WIDTH), new["blocks.1.attn.v_bias"]))}
    assert all(torch.equal(weights[k], v) for k, v in overridden.items())
    assert same_weights({k: v for k, v in weights.items() if k not in overridden},
                        {k: v for k, v in reference.items() if k not in overridden})


def one_line_error(fn) -> str:
    with pytest.raises(KneuronError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_unexpected_and_misshaped_keys_are_listed(ckpts, tmp_path):
    torch.manual_seed(0)
    vit = eva_vit_state()
    del vit["blocks.1.mlp.fc2.bias"]
    vit["blocks.0.attn.extra_scale"] = torch.ones(1)
    bad = tmp_path / "eva_bad.pth"
    torch.save(vit, bad)
    msg = one_line_error(lambda: convert(ckpts, tmp_path / "x", eva=bad))
    assert "missing: vision_model.encoder.layers.1.mlp.fc2.bias" in msg
    assert "unexpected: visual_encoder.blocks.0.attn.extra_scale" in msg
    # a Q-Former-shaped llama_proj forced into the patch variant -> shape mismatch named
    msg = one_line_error(lambda: convert(ckpts, tmp_path / "y", variant="patch"))
    assert "shape mismatch" in msg and "llama_proj.weight" in msg
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_bad_paths_and_files_give_one_line(ckpts, tmp_path):
    msg = one_line_error(lambda: convert(ckpts, tmp_path / "o", eva=tmp_path / "nope.pth"))
    assert "EVA ViT checkpoint not found" in msg and "nope.pth" in msg
    msg = one_line_error(lambda: convert(ckpts, tmp_path / "o", llm=tmp_path / "no_llm"))
    assert "LLM folder not found" in msg
    msg = one_line_error(lambda: convert(ckpts, tmp_path / "o", qformer=None))
    assert "--qformer" in msg
    not_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_dict)
    msg = one_line_error(lambda: convert(ckpts, tmp_path / "o", minigpt4=not_dict))
    assert "not a dict" in msg and "list.pth" in msg
    no_model = tmp_path / "nomodel.pth"
    torch.save({"state_dict": {}}, no_model)
    msg = one_line_error(lambda: convert(ckpts, tmp_path / "o", qformer=no_model))
    assert "no 'model' state dict" in msg and "state_dict" in msg
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert "cannot read" in one_line_error(lambda: convert(ckpts, tmp_path / "o", eva=garbage))


def test_arguments_are_checked_before_anything_is_loaded(ckpts, tmp_path):
    no_llm = {"llm": tmp_path / "no_llm"}  # would fail later: the argument checks come first
    assert one_line_error(lambda: convert(ckpts, tmp_path / "o", variant="vicuna", **no_llm)) == (
        "unknown variant 'vicuna'; use one of auto, qformer, patch")
    assert one_line_error(lambda: convert(ckpts, tmp_path / "o", dtype="int8", **no_llm)) == (
        "unknown dtype 'int8'; use one of bf16, bfloat16, float16, float32, fp16, fp32")  # resolve_dtype's rule
    assert one_line_error(lambda: convert(ckpts, tmp_path / "o", dtype="auto", **no_llm)) == (
        "unknown dtype 'auto'; use float16, float32 or bfloat16")  # a converted folder has no stored dtype to keep
    assert one_line_error(lambda: convert(ckpts, tmp_path / "o", qformer=tmp_path / "no_blip2.pth", **no_llm)) == (
        f"Q-Former checkpoint not found: {tmp_path / 'no_blip2.pth'}")
    assert one_line_error(lambda: convert(ckpts, tmp_path / "o", minigpt4=tmp_path / "no_mg4.pth", **no_llm)) == (
        f"MiniGPT-4 checkpoint not found: {tmp_path / 'no_mg4.pth'}")
    out_file = tmp_path / "out.txt"
    out_file.write_text("not a folder")
    assert one_line_error(lambda: convert(ckpts, out_file, **no_llm)) == (
        f"output path exists and is not a folder: {out_file}")
    assert not (tmp_path / "o").exists() and out_file.read_text() == "not a folder"


def test_minigpt4_checkpoint_without_llama_proj_weight(ckpts, tmp_path):
    no_weight = tmp_path / "no_weight.pth"
    torch.save({"model": {"llama_proj.bias": rand(D_LLM), "Qformer.bert.embeddings.position_ids": torch.arange(4)}},
               no_weight)
    assert one_line_error(lambda: convert(ckpts, tmp_path / "o", minigpt4=no_weight)) == (
        f"MiniGPT-4 checkpoint {no_weight} has no llama_proj.weight "
        "(keys: Qformer.bert.embeddings.position_ids, llama_proj.bias)")
    empty = tmp_path / "empty.pth"
    torch.save({"model": {}}, empty)
    assert one_line_error(lambda: convert(ckpts, tmp_path / "o", minigpt4=empty)) == (
        f"MiniGPT-4 checkpoint {empty} has no llama_proj.weight (keys: none)")
    assert not (tmp_path / "o").exists()


def test_head_rules():
    assert default_vision_heads(1408) == 16 and default_vision_heads(1024) == 16
    assert default_qformer_heads(768) == 12
    assert "--vision-heads" in one_line_error(lambda: default_vision_heads(40))
    assert "--qformer-heads" in one_line_error(lambda: default_qformer_heads(40))


def test_cli_help_documents_inputs():
    result = CliRunner().invoke(group, ["convert", "--help"])
    assert result.exit_code == 0
    text = result.output
    for needle in ("--eva-vit", "eva_vit_g.pth", "--qformer", "blip2_pretrained_flant5xxl.pth", "--minigpt4",
                   "pretrained_minigpt4", "--llm", "Vision-CAIR/vicuna", "--out", "--variant", "--copy-llm",
                   "--dtype", "llama_proj"):
        assert needle in text, needle


def test_cli_converts(ckpts, tmp_path):
    out = tmp_path / "cli_out"
    result = CliRunner().invoke(group, [
        "convert", "--eva-vit", str(ckpts["eva"]), "--qformer", str(ckpts["blip2"]), "--minigpt4",
        str(ckpts["mg4"]), "--llm", str(ckpts["llm"]), "--out", str(out), "--vision-heads", str(VIT_HEADS),
        "--qformer-heads", str(Q_HEADS)])
    assert result.exit_code == 0, result.output
    assert "variant: qformer" in result.output and "ignoring 1 keys" in result.output
    assert load_model(str(out)).spec.architecture.variant == "qformer"
