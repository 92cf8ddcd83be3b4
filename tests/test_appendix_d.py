"""appendix_d.py: the learning rate schedule, and train_model's warmup, cosine decay and clipping."""

import pytest
import torch
from conftest import CHAR_CFG, CharTokenizer, char_loaders

from appendix_d import lr_at_step, train_model
from s_gpt_model import GPTModel


def test_learning_rate_schedule_values():
    peak, initial, minimum, warmup, total = 0.01, 0.0001, 0.00001, 27, 135
    lrs = [lr_at_step(s, warmup, total, peak, initial, minimum) for s in range(total + 1)]
    # Linear warmup from initial_lr towards peak_lr ...
    assert lrs[0] == pytest.approx(initial)
    assert lrs[1] - lrs[0] == pytest.approx((peak - initial) / warmup)
    assert lrs[26] == pytest.approx(initial + 26 * (peak - initial) / 27)
    # ... peak_lr right after warmup, half-way down the cosine at mid-decay, min_lr at the end.
    assert lrs[27] == pytest.approx(peak)
    assert lrs[27 + 54] == pytest.approx(minimum + (peak - minimum) / 2)
    assert lrs[total] == pytest.approx(minimum)
    assert all(a > b for a, b in zip(lrs[27:], lrs[28:]))


def test_train_model_schedule_and_clipping_after_warmup(monkeypatch, capsys):
    torch.manual_seed(123)
    train_loader, val_loader = char_loaders(batch_size=4)
    model = GPTModel(CHAR_CFG)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
    n_epochs, warmup_steps = 3, 4
    total = len(train_loader) * n_epochs

    clipped_at_lr, grad_norms = [], []
    real_clip = torch.nn.utils.clip_grad_norm_

    def recording_clip(parameters, max_norm):
        clipped_at_lr.append(optimizer.param_groups[0]["lr"])
        return real_clip(parameters, max_norm)

    real_step = optimizer.step

    def recording_step(*args, **kwargs):
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        grad_norms.append(torch.cat(grads).norm().item())
        return real_step(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", recording_clip)
    monkeypatch.setattr(optimizer, "step", recording_step)
    train_losses, val_losses, tokens_seen, lrs = train_model(
        model, train_loader, val_loader, optimizer, "cpu", n_epochs=n_epochs, eval_freq=5, eval_iter=1,
        start_context="Every", tokenizer=CharTokenizer(), warmup_steps=warmup_steps,
        initial_lr=1e-4, min_lr=1e-5)

    assert "Ep 1 (Iter 000000)" in capsys.readouterr().out
    assert lrs == [lr_at_step(s, warmup_steps, total, 0.01, 1e-4, 1e-5) for s in range(total)]
    assert lrs[warmup_steps] == pytest.approx(0.01)
    assert clipped_at_lr == lrs[warmup_steps:]  # clipped on every step after warmup, never during it
    assert max(grad_norms[warmup_steps:]) <= 1.0 + 1e-4
    assert max(grad_norms[:warmup_steps]) > 1.0  # so clipping had something to do
    assert train_losses[-1] < train_losses[0]
