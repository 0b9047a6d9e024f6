"""`VLMAdapter.language_model_inputs` on every tiny adapter kind: exactly the ``inputs_embeds`` the language model
receives in a plain teacher-forced forward where the model calls it with those and an all-ones mask only (MiniGPT-4,
BLIP-2, InstructBLIP); None where it gets other arguments (Qwen2-VL's positions, Gemma 3's mask of its own) or
the forward does not call it as one module (the other HF families run their text model and head separately)."""
from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.helpers.hf_tiny import ALL_KINDS, MINIGPT4_KINDS, tiny_adapter, varied_images

#: the kinds whose forward calls the language model with ``inputs_embeds`` and an all-ones mask only
PLAIN_KINDS = (*MINIGPT4_KINDS, "blip-2", "instructblip")
Call = tuple[tuple[Any, ...], dict[str, Any]]


def teacher_forced(adapter: Any) -> Any:
    """Two images with targets of different lengths (padded to one)."""
    return adapter.prepare(varied_images(2, seed=3), targets=[adapter.encode("a red circle"), adapter.encode("star")])


def call_of(module: torch.nn.Module, adapter: Any, prepared: Any) -> Call | None:
    """The positional and keyword arguments ``module`` gets in ``adapter.model``'s forward (None when the forward
    does not call it); a forward pre-hook that only looks."""
    calls: list[Call] = []

    def keep(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((args, dict(kwargs)))

    handle = module.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.model(*prepared.args, **prepared.kwargs)
    finally:
        handle.remove()
    assert len(calls) <= 1
    return calls[0] if calls else None


def plain(call: Call) -> bool:
    """Only ``inputs_embeds`` and an all-ones (or no) ``attention_mask``, by keyword."""
    args, kwargs = call
    given = {k for k, v in kwargs.items() if v is not None}
    mask = kwargs.get("attention_mask")
    return (not args and "inputs_embeds" in given and given <= {"inputs_embeds", "attention_mask"}
            and (mask is None or (isinstance(mask, torch.Tensor) and bool((mask == 1).all()))))


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_language_model_inputs_are_what_the_forward_hands_the_language_model(kind: str) -> None:
    adapter = tiny_adapter(kind)
    prepared = teacher_forced(adapter)
    call = call_of(adapter.language_model, adapter, prepared)
    embeds = adapter.language_model_inputs(prepared)
    if kind not in PLAIN_KINDS:
        assert embeds is None
        assert call is None or not plain(call)
        return
    assert call is not None and plain(call)
    assert embeds is not None
    received = call[1]["inputs_embeds"]
    assert embeds.shape == (2, prepared.prompt_length + prepared.target_ids.shape[1], received.shape[-1])
    assert torch.equal(embeds, received)
    if kind in MINIGPT4_KINDS:  # its generation inputs are the prompt part
        generation = adapter.generation_embeds(adapter.prepare(varied_images(2, seed=3)))
        assert torch.equal(generation, embeds[:, :prepared.prompt_length])


@pytest.mark.parametrize("kind", ["qwen2-vl", "gemma3"])
def test_no_language_model_inputs_where_the_text_model_gets_more(kind: str) -> None:
    adapter = tiny_adapter(kind)
    prepared = teacher_forced(adapter)
    call = call_of(adapter.language_model.model, adapter, prepared)  # the decoder stack the view wraps
    assert call is not None and "inputs_embeds" in call[1] and not plain(call)  # M-RoPE positions; a mask dict
    assert adapter.language_model_inputs(prepared) is None
