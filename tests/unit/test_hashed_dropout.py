"""Hashed dropout masks: the statistics of a Bernoulli mask, reproducible under a seed, scoped patching."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from worker.training import dropout as hd


def _binomial_ok(count: int, n: int, q: float, sigmas: float = 6.0) -> bool:
    return abs(count - n * q) <= sigmas * math.sqrt(n * q * (1 - q))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_keep_rate_matches_p(p: float) -> None:
    torch.manual_seed(0)
    n = 1 << 20
    mask = hd.keep_mask(n, p)
    assert mask.dtype == torch.bool and mask.shape == (n,)
    assert _binomial_ok(int(mask.sum()), n, 1 - p)


def test_masks_look_independent_within_and_across_calls() -> None:
    torch.manual_seed(1)
    p, rows, cols = 0.1, 1024, 256
    first = hd.keep_mask(rows * cols, p).view(rows, cols)
    second = hd.keep_mask(rows * cols, p).view(rows, cols)
    n = rows * cols
    assert not torch.equal(first, second)
    # two calls: both dropped as often as independent masks give (p**2), so no shared or shifted mask
    assert _binomial_ok(int((~first & ~second).sum()), n, p * p)
    # neighbours along a row, along a column, and a whole row apart
    assert _binomial_ok(int((~first[:, 1:] & ~first[:, :-1]).sum()), rows * (cols - 1), p * p)
    assert _binomial_ok(int((~first[1:] & ~first[:-1]).sum()), (rows - 1) * cols, p * p)
    # every column and every row keeps at its rate (no stripes)
    per_column = first.float().mean(0)
    assert float((per_column - (1 - p)).abs().max()) < 6 * math.sqrt(p * (1 - p) / rows)
    per_row = first.float().mean(1)
    assert float((per_row - (1 - p)).abs().max()) < 6 * math.sqrt(p * (1 - p) / cols)
    # each of the 24 compared bits is balanced
    torch.manual_seed(2)
    bits = hd.keep_mask(n, 0.5)
    assert _binomial_ok(int(bits.sum()), n, 0.5)


def test_same_seed_same_masks_other_seed_other_masks() -> None:
    x = torch.ones(64, 33)
    torch.manual_seed(7)
    a = hd.dropout(x, 0.2)
    torch.manual_seed(7)
    b = hd.dropout(x, 0.2)
    torch.manual_seed(8)
    c = hd.dropout(x, 0.2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scaling_gradient_and_expectation_match_f_dropout(dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    p = 0.1
    x = torch.randn(512, 128).to(dtype).requires_grad_(True)
    y = hd.dropout(x, p)
    assert y.dtype == dtype and y.shape == x.shape
    kept = y.detach() != 0
    scale = torch.tensor(1 / (1 - p), dtype=dtype)
    assert torch.equal(y.detach()[kept], (x.detach() * scale)[kept])
    y.sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad, torch.where(kept, scale, torch.zeros((), dtype=dtype)))
    # over many masks the output averages to the input, as F.dropout's does
    ones = torch.ones(256, 256)
    mean = torch.stack([hd.dropout(ones, p) for _ in range(64)]).mean()
    assert abs(float(mean) - 1.0) < 0.01


def test_passthrough_cases_and_bad_p() -> None:
    x = torch.randn(8, 8)
    assert torch.equal(hd.dropout(x, 0.1, training=False), x)
    assert torch.equal(hd.dropout(x, 0.0), x)
    assert torch.equal(hd.dropout(x, 1.0), torch.zeros_like(x))
    inplace = x.clone()
    out = hd.dropout(inplace, 0.5, inplace=True)
    assert out.data_ptr() == inplace.data_ptr()
    with pytest.raises(ValueError):
        hd.dropout(x, 1.5)
    with pytest.raises(ValueError):
        hd.keep_mask(10, -0.1)


def test_patch_is_scoped_nested_and_restored_on_error() -> None:
    original = F.dropout
    with hd.hashed_dropout():
        assert F.dropout is hd.dropout
        with hd.hashed_dropout():
            assert F.dropout is hd.dropout
        assert F.dropout is hd.dropout
    assert F.dropout is original
    with pytest.raises(RuntimeError), hd.hashed_dropout():
        raise RuntimeError("boom")
    assert F.dropout is original
    with hd.hashed_dropout(enabled=False):
        assert F.dropout is original


def test_a_marian_layer_in_training_uses_the_hashed_masks() -> None:
    """transformers' layers look F.dropout up at call time, so the block reaches them; eval mode is untouched."""
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(vocab_size=50, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                          decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=32,
                          dropout=0.3, attention_dropout=0.3, pad_token_id=0, decoder_start_token_id=0)
    torch.manual_seed(0)
    model = MarianMTModel(config)
    ids = torch.randint(1, 50, (2, 7))
    calls = []
    real = hd._keep_ints

    def counting(numel, p, generator=None):
        calls.append((numel, p))
        return real(numel, p, generator)

    hd._keep_ints = counting  # type: ignore[assignment]
    try:
        with hd.hashed_dropout():
            model.train()
            torch.manual_seed(5)
            a = model(input_ids=ids, decoder_input_ids=ids).logits
            torch.manual_seed(5)
            b = model(input_ids=ids, decoder_input_ids=ids).logits
            assert calls and all(p == pytest.approx(0.3) for _, p in calls)
            assert torch.equal(a, b)
            model.eval()
            before = len(calls)
            with torch.no_grad():
                model(input_ids=ids, decoder_input_ids=ids)
            assert len(calls) == before
    finally:
        hd._keep_ints = real  # type: ignore[assignment]
