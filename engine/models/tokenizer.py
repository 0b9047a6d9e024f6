"""Word-level tokenizer for tiny models trained on a closed caption vocabulary (the embedded world)."""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")


STOP_MARKER = "###"  # the Vicuna-v0 separator: kept as one token so it can stop generation


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Split(STOP_MARKER, behavior="isolated"),
                                    pre_tokenizers.Whitespace()])


def pre_tokenize(text: str) -> list[str]:
    """Split text the way the word-level tokenizer does: ``###`` alone, then ``\\w+|[^\\w\\s]+``.

    Special tokens (``<s>`` ...) are removed first: the tokenizer matches them before pre-tokenizing.
    """
    for special in SPECIAL_TOKENS:
        text = text.replace(special, " ")
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(text)]


def build_word_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` whose vocabulary is every word piece of ``texts`` (sorted, specials first).

    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<s>`` 2 (BOS), ``</s>`` 3 (EOS). Decoding joins words with spaces.
    """
    words = sorted({piece for text in texts for piece in pre_tokenize(text)} - set(SPECIAL_TOKENS))
    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = _pre_tokenizer()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>", model_max_length=512)
