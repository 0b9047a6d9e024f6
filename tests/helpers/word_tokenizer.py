"""The word-level tokenizer the tiny test models share: a `PreTrainedTokenizerFast` over every word piece of some
texts, with a family's special tokens."""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from kneuron.engine.models.tokenizer import pre_tokenize


def word_level_tokenizer(texts: Iterable[str], specials: tuple[str, ...], roles: dict[str, str], max_length: int,
                         bos_template: bool, extra_specials: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Word-level tokenizer whose ids are ``specials`` first, then every word piece of ``texts`` (sorted), then
    ``extra_specials`` (added as special tokens). ``extra_specials`` and ``specials`` are removed from the texts
    first. ``roles`` maps ``pad_token`` / ``unk_token`` / ``bos_token`` / ``eos_token`` to tokens (``unk_token`` is
    the backend's unknown token). ``bos_template``: BOS prepended when ``add_special_tokens``, and decoding joins
    words with spaces."""
    texts = list(texts)
    for special in (*extra_specials, *specials):
        texts = [text.replace(special, " ") for text in texts]
    words = sorted({piece for text in texts for piece in pre_tokenize(text)} - set(specials))
    vocab = {tok: i for i, tok in enumerate(list(specials) + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=roles["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos_template:
        bos = roles["bos_token"]
        backend.post_processor = processors.TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, vocab[bos])])
        backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=max_length, **roles)
    if extra_specials:
        tok.add_tokens(list(extra_specials), special_tokens=True)
    return tok
