"""``kneuron convert``: official MiniGPT-4 checkpoints -> a kneuron model folder."""
from __future__ import annotations

from pathlib import Path

import click

HELP = """Convert the official MiniGPT-4 checkpoints into a kneuron model folder.

\b
Inputs (download them yourself; nothing is fetched):
  --eva-vit    eva_vit_g.pth, the EVA ViT-g/14 vision encoder (LAVIS/BLIP-2 release):
               https://storage.googleapis.com/sfr-vision-language-research/LAVIS/models/BLIP2/eva_vit_g.pth
  --qformer    blip2_pretrained_flant5xxl.pth, the BLIP-2 checkpoint that gives the Q-Former, query_tokens
               and ln_vision (same bucket: .../LAVIS/models/BLIP2/blip2_pretrained_flant5xxl.pth). Needed for
               the Vicuna-v0 (qformer) variant only; the LLaMA-2 (patch) variant has no Q-Former.
  --minigpt4   the MiniGPT-4 checkpoint from the Vision-CAIR README (Google Drive):
               pretrained_minigpt4.pth (13B), prerained_minigpt4_7b.pth (7B),
               pretrained_minigpt4_llama2_7b.pth (LLaMA-2). Only llama_proj.* is used.
  --llm        the language model as a Hugging Face folder: Vicuna v0 7B/13B (Vision-CAIR/vicuna-7b,
               Vision-CAIR/vicuna) or meta-llama/Llama-2-7b-chat-hf. Its tokenizer is used.
  --out        the folder to write: kneuron_model.json + model.safetensors (all non-LLM weights); the LLM
               stays where it is (llm_path = its absolute path) unless --copy-llm copies it into
               OUT/language_model.

The variant is detected from llama_proj's input width unless --variant says otherwise. The .pth files are
trusted official releases: loaded with torch.load(weights_only=True), falling back to weights_only=False.
Use OUT wherever a model name or folder is accepted (kneuron.engine.models.load_model(OUT)).
"""


@click.command("convert", help=HELP)
@click.option("--eva-vit", "eva_vit", required=True, type=click.Path(path_type=Path),
              help="eva_vit_g.pth (EVA ViT-g state dict, keys without 'visual_encoder.').")
@click.option("--qformer", type=click.Path(path_type=Path), default=None,
              help="blip2_pretrained_flant5xxl.pth (['model']: Qformer.*, query_tokens, ln_vision.*); "
                   "qformer variant only.")
@click.option("--minigpt4", "minigpt4", required=True, type=click.Path(path_type=Path),
              help="pretrained_minigpt4*.pth (['model']: llama_proj.* is used).")
@click.option("--llm", required=True, type=click.Path(path_type=Path),
              help="Hugging Face Vicuna / LLaMA-2 folder (config.json, weights, tokenizer).")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output kneuron model folder (a folder, not a file).")
@click.option("--variant", type=click.Choice(["auto", "qformer", "patch"]), default="auto", show_default=True,
              help="qformer = Vicuna-v0 (32 query tokens), patch = LLaMA-2 (64 grouped-patch tokens).")
@click.option("--copy-llm", is_flag=True, help="Save the LLM into OUT/language_model instead of linking to --llm.")
@click.option("--dtype", type=click.Choice(["float16", "float32", "bfloat16"]), default="float16",
              show_default=True, help="dtype of the saved weights.")
@click.option("--vision-heads", type=int, default=None,
              help="ViT attention heads (default: width/88 if it divides, e.g. 1408 -> 16, else width/64).")
@click.option("--qformer-heads", type=int, default=None, help="Q-Former attention heads (default: width/64).")
def command(eva_vit: Path, qformer: Path | None, minigpt4: Path, llm: Path, out: Path, variant: str,
            copy_llm: bool, dtype: str, vision_heads: int | None, qformer_heads: int | None) -> None:
    from kneuron.engine.models.convert import convert_official

    folder = convert_official(eva_vit, qformer, minigpt4, llm, out, variant=variant, copy_llm=copy_llm,
                              dtype=dtype, vision_heads=vision_heads, qformer_heads=qformer_heads,
                              log=click.echo)
    click.echo(f"converted MiniGPT-4 -> {folder}")
