"""Official MiniGPT-4 prompt templates (Vicuna-v0 and LLaMA-2) and how a prompt is split around the image.

The prompt is split on ``<ImageHere>``; each segment is tokenized on its own and only the first gets BOS
(``get_context_emb`` in the official code). Image tokens go between the two segments.
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
            text = text.split(stop)[0]
        if self.answer_marker:
            text = text.split(self.answer_marker)[-1]
        return text.strip()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PromptTemplate":
        return cls(name=data["name"], text=data["text"], stop_strings=tuple(data["stop_strings"]),
                   answer_marker=data.get("answer_marker", ""))


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

TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (VICUNA0, VICUNA0_TRAIN, LLAMA2)}

DEFAULT_INSTRUCTION = "Describe this image in detail."


def get_template(spec: str | dict[str, Any]) -> PromptTemplate:
    """A built-in template by name, or a custom one from its dict."""
    if isinstance(spec, dict):
        return PromptTemplate.from_dict(spec)
    if spec not in TEMPLATES:
        raise KeyError(f"unknown prompt template {spec!r}; built-in: {', '.join(TEMPLATES)}")
    return TEMPLATES[spec]
