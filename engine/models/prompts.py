"""MiniGPT-4 prompt templates (Vicuna-v0, LLaMA-2, ChatML) and how a prompt is split around the image.

The prompt is split on ``<ImageHere>``; each segment is tokenized on its own and only the first may get BOS
(``get_context_emb`` in the official code). Image tokens go between the two segments.

**BOS rule** (`prompt_token_ids`), per template ``bos``:

- ``"auto"`` (every built-in template): when the tokenizer has a BOS token, the first segment starts with
  BOS *by token id*; a template text that already starts with the BOS string (LLaMA-2's ``<s>``, ChatML's
  ``<|im_start|>`` in SmolLM2, whose BOS is ``<|im_start|>``) has that string removed first, so BOS is never
  doubled and does not depend on how the tokenizer splits its own BOS string. A template that starts with
  other text (Vicuna-v0's ``###Human:``, ChatML under a LLaMA tokenizer whose BOS is ``<s>``) gets BOS in front.
  A tokenizer without BOS (``bos_token_id`` None) gets none: the text is tokenized as written.
- ``"never"``: the text is tokenized as written, for models trained without BOS.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

IMAGE_PLACEHOLDER = "<ImageHere>"


@dataclass(frozen=True)
class PromptTemplate:
    """A conversation template. ``text`` holds ``{instruction}`` and exactly one ``<ImageHere>``.

    ``stop_strings``: generation ends at the first of these (post-processing cuts there too).
    ``answer_marker``: text after which the answer starts (the official post-processing splits on it).
    """

    name: str
    text: str
    stop_strings: tuple[str, ...]
    answer_marker: str = ""
    bos: str = "auto"

    def render(self, instruction: str) -> str:
        return self.text.format(instruction=instruction)

    def segments(self, instruction: str) -> tuple[str, str]:
        """The prompt before and after the image placeholder."""
        before, sep, after = self.render(instruction).partition(IMAGE_PLACEHOLDER)
        if not sep:
            raise ValueError(f"template {self.name!r} has no {IMAGE_PLACEHOLDER}")
        return before, after

    def clean_answer(self, text: str) -> str:
        """Official post-processing: cut at the first stop string, drop an echoed answer marker, strip."""
        for stop in self.stop_strings:
            text = text.split(stop, maxsplit=1)[0]
        if self.answer_marker:
            text = text.split(self.answer_marker)[-1]
        return text.strip()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptTemplate:
        return cls(name=data["name"], text=data["text"], stop_strings=tuple(data["stop_strings"]),
                   answer_marker=data.get("answer_marker", ""), bos=data.get("bos", "auto"))


VICUNA0 = PromptTemplate(
    name="vicuna0",
    text=(
        "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it "
        "to you. Please answer my questions.###Human: <Img><ImageHere></Img> {instruction}###Assistant: "
    ),
    stop_strings=("###",),
    answer_marker="Assistant:",
)

# The official *training* template (``'###Human: {} ###Assistant: '``): no system message. The tiny models
# are trained and used with it; it keeps sequences short on CPUs.
VICUNA0_TRAIN = PromptTemplate(
    name="vicuna0_train",
    text="###Human: <Img><ImageHere></Img> {instruction} ###Assistant: ",
    stop_strings=("###",),
    answer_marker="Assistant:",
)

LLAMA2 = PromptTemplate(
    name="llama2",
    text="<s>[INST] <Img><ImageHere></Img> {instruction} [/INST] ",
    stop_strings=("</s>",),
)

# ChatML as SmolLM2-Instruct uses it (BOS ``<|im_start|>``, EOS/pad ``<|im_end|>``), without a system message.
CHATML = PromptTemplate(
    name="chatml",
    text="<|im_start|>user\n<Img><ImageHere></Img> {instruction}<|im_end|>\n<|im_start|>assistant\n",
    stop_strings=("<|im_end|>",),
)

TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (VICUNA0, VICUNA0_TRAIN, LLAMA2, CHATML)}
BOS_RULES = ("auto", "never")

DEFAULT_INSTRUCTION = "Describe this image in detail."


def get_template(spec: str | dict[str, Any]) -> PromptTemplate:
    """A built-in template by name, or a custom one from its dict."""
    if isinstance(spec, dict):
        return PromptTemplate.from_dict(spec)
    if spec not in TEMPLATES:
        raise KeyError(f"unknown prompt template {spec!r}; built-in: {', '.join(TEMPLATES)}")
    return TEMPLATES[spec]


def prompt_token_ids(template: PromptTemplate, instruction: str, tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids of the prompt before / after the image, with BOS on the first segment by the module's rule.

    ``tokenizer``: a Hugging Face tokenizer (``bos_token``, ``bos_token_id``, ``__call__``). Each segment is
    tokenized alone, without the tokenizer's own special tokens; special-token strings in the text (``</s>``,
    ``<|im_end|>``) become their ids.
    """
    if template.bos not in BOS_RULES:
        raise ValueError(f"template {template.name!r}: unknown bos rule {template.bos!r} ({' | '.join(BOS_RULES)})")
    before, after = template.segments(instruction)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    bos_id = getattr(tokenizer, "bos_token_id", None)
    if template.bos == "never" or bos_id is None:
        return encode(before), encode(after)
    bos_text = getattr(tokenizer, "bos_token", None)
    if bos_text and before.startswith(bos_text):
        before = before[len(bos_text):]
    return [int(bos_id)] + encode(before), encode(after)
