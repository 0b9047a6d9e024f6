"""The BOS rule of prompts: BOS by id once, whatever the template starts with; none without a tokenizer BOS."""
from __future__ import annotations

import pytest

from kneuron.engine.models.prompts import (
    CHATML,
    LLAMA2,
    TEMPLATES,
    VICUNA0_TRAIN,
    PromptTemplate,
    get_template,
    prompt_token_ids,
)
from kneuron.engine.models.tokenizer import build_word_tokenizer
from tests.helpers.tiny_llm import chatml_tokenizer, no_bos_tokenizer

INSTRUCTION = "Describe this image in detail."
TEXTS = [t.text for t in TEMPLATES.values()] + [INSTRUCTION]


def words(tokenizer, text: str) -> list[int]:  # noqa: ANN001
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_template_without_bos_text_gets_bos_by_id() -> None:
    tok = build_word_tokenizer(TEXTS)
    before, after = prompt_token_ids(VICUNA0_TRAIN, INSTRUCTION, tok)
    assert before == [tok.bos_token_id] + words(tok, "###Human: <Img>")
    assert after == words(tok, f"</Img> {INSTRUCTION} ###Assistant: ")


def test_template_starting_with_the_bos_string_gets_it_once() -> None:
    tok = build_word_tokenizer(TEXTS)
    before, _ = prompt_token_ids(LLAMA2, INSTRUCTION, tok)
    assert before == [tok.bos_token_id] + words(tok, "[INST] <Img>") and before.count(tok.bos_token_id) == 1


def test_chatml_under_a_tokenizer_whose_bos_is_another_token() -> None:
    """ChatML's first text ``<|im_start|>`` is not this tokenizer's BOS (``<s>``): BOS goes in front of it."""
    tok = build_word_tokenizer(TEXTS)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    before, after = prompt_token_ids(CHATML, INSTRUCTION, tok)
    assert before[:2] == [tok.bos_token_id, start] and before.count(tok.bos_token_id) == 1
    assert after[-len(words(tok, "<|im_end|> <|im_start|> assistant")):] == words(
        tok, "<|im_end|> <|im_start|> assistant")
    assert end in after and tok.bos_token_id not in after


def test_chatml_under_smollm2_style_tokenizer() -> None:
    """SmolLM2: BOS is ``<|im_start|>`` itself, so the prompt starts with it exactly once; later turns keep theirs."""
    tok = chatml_tokenizer(TEXTS)
    before, after = prompt_token_ids(CHATML, INSTRUCTION, tok)
    assert tok.bos_token_id == 1 and before[0] == 1 and before.count(1) == 1
    assert before == words(tok, CHATML.segments(INSTRUCTION)[0])  # the same as tokenizing the text as written
    assert after.count(tok.eos_token_id) == 1 and after.count(1) == 1  # <|im_end|> ... <|im_start|>assistant
    assert CHATML.clean_answer("a red circle<|im_end|>\n<|im_start|>user") == "a red circle"


def test_tokenizer_without_bos_and_the_never_rule_tokenize_as_written() -> None:
    tok = no_bos_tokenizer(TEXTS)
    assert tok.bos_token_id is None
    before, _ = prompt_token_ids(VICUNA0_TRAIN, INSTRUCTION, tok)
    assert before == words(tok, "###Human: <Img>")
    plain = build_word_tokenizer(TEXTS)
    never = PromptTemplate("x", "###Human: <Img><ImageHere></Img> {instruction}", ("###",), bos="never")
    assert prompt_token_ids(never, INSTRUCTION, plain)[0] == words(plain, "###Human: <Img>")


def test_bos_rule_round_trips_and_is_checked() -> None:
    custom = PromptTemplate("mine", "Q: <ImageHere> {instruction} A:", ("\n",), bos="never")
    assert get_template(custom.to_dict()) == custom
    assert get_template({"name": "old", "text": "<ImageHere>{instruction}", "stop_strings": ["#"]}).bos == "auto"
    with pytest.raises(ValueError, match="unknown bos rule 'sometimes'"):
        prompt_token_ids(PromptTemplate("b", "<ImageHere>{instruction}", ("#",), bos="sometimes"), "hi",
                         build_word_tokenizer(TEXTS))
