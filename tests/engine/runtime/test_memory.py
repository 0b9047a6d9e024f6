"""`kneuron.engine.runtime.memory`: the rule behind ``kneuron ingest --batch-size auto``, checked with fake memory
budgets."""
from __future__ import annotations

import pytest

from kneuron.engine.runtime.memory import (
    CAP,
    CPU_BATCH,
    RecordShape,
    auto_batch_size,
    bytes_per_pair,
    choose_batch_size,
    record_shape,
)
from tests.helpers.cli_runner import run_cli
from tests.helpers.tiny_models import tiny_minigpt4

#: MiniGPT-4-7B (Vicuna-7B, 32 queries + ~70 text tokens), bf16
VICUNA_7B = RecordShape(n_layers=32, d_model=4096, d_ff=11008, vocab=32000, tokens=100, dtype_bytes=2)


def test_bytes_per_pair_follows_the_documented_formula() -> None:
    per_token = 32 * (4 * 11008 + 10 * 4096) * 2 + 4 * 32000
    assert bytes_per_pair(VICUNA_7B) == 2 * 100 * per_token  # ~1.1 GB per pair
    assert 1.0e9 < bytes_per_pair(VICUNA_7B) < 1.2e9


@pytest.mark.parametrize("free_gib,expected", [(0, 1), (1, 1), (20, 11), (60, CAP), (1000, CAP)])
def test_auto_batch_size_fills_the_safe_share_of_free_memory(free_gib: int, expected: int) -> None:
    assert auto_batch_size(VICUNA_7B, free_gib * 2**30) == expected
    if 1 < expected < CAP:
        assert expected * bytes_per_pair(VICUNA_7B) <= 0.6 * free_gib * 2**30 < \
            (expected + 1) * bytes_per_pair(VICUNA_7B)


def test_choose_batch_size_on_a_model() -> None:
    adapter = tiny_minigpt4()
    shape = record_shape(adapter)
    config = adapter.language_model.config
    assert (shape.n_layers, shape.d_model, shape.d_ff, shape.vocab, shape.dtype_bytes) == \
        (adapter.n_layers, config.hidden_size, adapter.d_ff, config.vocab_size, 4)
    assert choose_batch_size(5, adapter) == (5, None)
    assert choose_batch_size("auto", adapter)[0] == CPU_BATCH  # CPU: time, not memory, bounds the batch
    budget = 7 * bytes_per_pair(shape) / 0.6 + 1
    chosen, note = choose_batch_size("auto", adapter, free_bytes=int(budget))
    assert chosen == 7 and note is not None and note.startswith("batch size auto: 7 pairs")


def test_bad_batch_size_is_one_line(capsys) -> None:
    code, out, err = run_cli(["ingest", "--batch-size", "lots"], capsys)
    assert (code, out) == (2, "") and err == "kneuron: error: --batch-size must be a number >= 1 or auto, got 'lots'\n"
