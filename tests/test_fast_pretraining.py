"""fast_pretraining.py trains as chapter 5 does: the fast path follows the book's losses from the
same seed, gradient accumulation equals the larger batch, and two-process DDP on CPU equals one
process with the global batch."""

import argparse

import pytest
import torch
from conftest import (
    TOKEN_CFG,
    TOKEN_CFG_NO_QKV_BIAS,
    TRAIN_SETTINGS,
    CharTokenizer,
    run_ranks,
    run_script,
    token_dataset,
)
from torch.utils.data import DataLoader, DistributedSampler

import checkpoints
import fast_pretraining as fp
import u_pretraining as u
from fast_attention import FastDropout, FastMultiHeadAttention
from y_neural_network_basics import ddp_setup

# ---- training ----

def train(cfg, fast=False, grad_accum_steps=1, batch_size=2, autocast_dtype=None, epochs=2,
          book_dropout=True):
    """Train on token_dataset() from seed 123; return (model, losses on a fixed loader, tokens seen)."""
    loader = DataLoader(token_dataset(), batch_size=batch_size, shuffle=False)
    eval_loader = DataLoader(token_dataset(), batch_size=4, shuffle=False)
    model, train_model, optimizer = fp.build_training(cfg, TRAIN_SETTINGS, torch.device("cpu"), fast=fast,
                                                      book_dropout=book_dropout)
    _, losses, tokens_seen = fp.train_model_fast(
        train_model, loader, eval_loader, optimizer, torch.device("cpu"), num_epochs=epochs, eval_freq=2,
        eval_iter=2, start_context="ab", tokenizer=CharTokenizer(TOKEN_CFG["vocab_size"]),
        grad_accum_steps=grad_accum_steps, autocast_dtype=autocast_dtype)
    return model, losses, tokens_seen


def test_fast_training_follows_the_book_training_from_the_same_seed(capsys):
    cfg = {**TOKEN_CFG, "drop_rate": 0.1}
    book_model, book_losses, book_tokens = train(cfg)
    assert book_losses[-1] < book_losses[0] - 0.3  # it learns
    # The same seed gives the same weights and dropout masks, so only rounding differs: the fast
    # path (fused attention, LayerNorm, GELU, AdamW) is the book's model, computed differently.
    fast_model, fast_losses, fast_tokens = train(fp.fast_config(cfg), fast=True)
    assert fast_tokens == book_tokens
    assert fast_losses == pytest.approx(book_losses, abs=1e-4)
    # With bfloat16 autocast the rounding is coarser.
    _, bf16_losses, _ = train(fp.fast_config(cfg), fast=True, autocast_dtype=torch.bfloat16)
    assert bf16_losses == pytest.approx(book_losses, abs=0.05)
    assert bf16_losses != pytest.approx(book_losses, abs=1e-4)  # so bfloat16 was really used
    assert "Ep 2 (Step 000014)" in capsys.readouterr().out


def test_fast_dropout_masks_train_to_the_books_losses_within_their_noise():
    cfg = {**TOKEN_CFG, "drop_rate": 0.1}
    _, book_losses, _ = train(cfg, epochs=4)
    fast_model, fast_losses, _ = train(fp.fast_config(cfg), fast=True, epochs=4, book_dropout=False)
    assert any(isinstance(module, FastDropout) for module in fast_model.modules())
    # Other masks, so other steps: the losses differ, but by what dropout's randomness moves them.
    assert fast_losses != pytest.approx(book_losses, abs=1e-4)
    assert fast_losses == pytest.approx(book_losses, abs=0.05)
    assert fast_losses[-1] < fast_losses[0] - 0.5


def test_dtype_flag_picks_the_autocast_dtype_and_keeps_float32_on_request():
    cpu = torch.device("cpu")
    assert fp.autocast_dtype_for("float32", cpu) is None
    assert fp.autocast_dtype_for("bfloat16", cpu) is torch.bfloat16
    assert fp.autocast_dtype_for("auto", cpu) is fp.fast_autocast_dtype(cpu)
    with pytest.raises(ValueError, match="unknown dtype 'float16'"):
        fp.autocast_dtype_for("float16", cpu)
    args = argparse.Namespace(book_model=False, dtype="float32", compile=False, grad_accum=1,
                              book_dropout=False)
    train_kwargs, used = fp.setup_fast_paths(args, cpu)
    assert train_kwargs["autocast_dtype"] is None and "bfloat16" not in used
    assert used.startswith("FastMultiHeadAttention, fused AdamW, fused LayerNorm and GELU, "
                           "cheaper dropout masks")
    train_kwargs, used = fp.setup_fast_paths(argparse.Namespace(**{**vars(args), "dtype": "bfloat16"}), cpu)
    assert train_kwargs["autocast_dtype"] is torch.bfloat16 and used.endswith("bfloat16 autocast")


def test_gradient_accumulation_matches_the_larger_batch():
    cfg = TOKEN_CFG_NO_QKV_BIAS
    model_big, losses_big, tokens_big = train(cfg, batch_size=4)
    model_accum, losses_accum, tokens_accum = train(cfg, batch_size=2, grad_accum_steps=2)
    assert tokens_accum == tokens_big and len(losses_accum) == len(losses_big)
    assert losses_accum == pytest.approx(losses_big, abs=1e-5)
    for (name, big), accum in zip(model_big.state_dict().items(), model_accum.state_dict().values()):
        assert torch.allclose(accum, big, atol=1e-5), name


def test_accumulation_groups_keep_every_batch():
    assert [len(group) for group in fp.accumulation_groups(range(7), 3)] == [3, 3, 1]
    assert [group for group in fp.accumulation_groups(range(2), 1)] == [[0], [1]]


# ---- DDP on CPU ----

def ddp_worker(rank, world_size, results_dir):
    """One rank, started the way torchrun starts it (conftest.run_ranks)."""
    rank, world_size, device = ddp_setup("cpu")
    try:
        loader = fp.distributed_loader(DataLoader(token_dataset(), batch_size=2), rank, world_size)
        model, train_model, optimizer = fp.build_training(TOKEN_CFG_NO_QKV_BIAS, TRAIN_SETTINGS, device,
                                                          ddp=True)
        losses, _, tokens_seen = fp.train_model_fast(
            train_model, loader, loader, optimizer, device, num_epochs=2, eval_freq=2, eval_iter=1,
            start_context="ab", tokenizer=CharTokenizer(TOKEN_CFG["vocab_size"]), is_main_process=rank == 0)
        del train_model  # before the process group goes (see y_neural_network_basics.ddp_train)
        torch.save({"state_dict": model.state_dict(), "losses": losses, "tokens_seen": tokens_seen},
                   f"{results_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_ddp_on_cpu_matches_one_process_with_the_global_batch(tmp_path):
    run_ranks(ddp_worker, str(tmp_path))
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert len(rank0["losses"]) == 4 and rank1["losses"] == []  # only rank 0 evaluates and prints
    # Tokens seen count both processes' batches: 2 x 2 windows of 12 tokens a step, after steps 0, 2, 4, 6.
    assert rank0["tokens_seen"] == [48 * (step + 1) for step in (0, 2, 4, 6)]
    for name, tensor in rank0["state_dict"].items():
        assert torch.equal(tensor, rank1["state_dict"][name]), name

    # One process, one optimizer step per global batch: rank 0's batch and rank 1's batch together.
    dataset = token_dataset()
    model, _, optimizer = fp.build_training(TOKEN_CFG_NO_QKV_BIAS, TRAIN_SETTINGS, torch.device("cpu"))
    for epoch in range(2):
        shards = []
        for rank in range(2):
            sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=u.SEED,
                                         drop_last=True)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
        for step in range(len(shards[0]) // 2):
            indices = shards[0][2 * step:2 * step + 2] + shards[1][2 * step:2 * step + 2]
            inputs, targets = dataset[indices]
            optimizer.zero_grad()
            u.calc_loss_batch(inputs, targets, model, "cpu").backward()
            optimizer.step()
    for name, tensor in model.state_dict().items():
        assert torch.allclose(rank0["state_dict"][name], tensor, atol=1e-5), name


def test_fast_pretraining_under_torchrun_trains_on_two_cpu_processes(tmp_path, gpt2_tokenizer):
    """The reader's command, `torchrun --nproc_per_node=2 fast_pretraining.py`, on a short story."""
    data_dir, outputs_dir = tmp_path / "data", tmp_path / "outputs"
    data_dir.mkdir()
    (data_dir / "the-verdict.txt").write_text(
        " ".join(f"Day {i}: the painter put down his brush and looked at the wall." for i in range(200)),
        encoding="utf-8")
    out = run_script("fast_pretraining.py", "--quick", "--epochs", "1", "--device", "cpu", data_dir=data_dir,
                     outputs_dir=outputs_dir, nproc_per_node=2, timeout=120,
                     env={"LLM_UNVERIFIED_DATA": "1"}).stdout  # the story stands in for the-verdict.txt
    assert out.count("2 processes (gloo); global batch 4; FastMultiHeadAttention") == 1  # rank 0 alone prints
    assert out.count("Ep 1 (Step 000000): Train loss") == 1
    quick_dir = outputs_dir / "quick"
    assert sorted(path.name for path in quick_dir.iterdir()) == ["fast-pretraining-loss-plot.png",
                                                                 "fast_pretraining.pth"]
    model, cfg = checkpoints.model_from_checkpoint(quick_dir / "fast_pretraining.pth")
    assert cfg == fp.fast_config(u.QUICK_CONFIG)
    assert isinstance(model.trf_blocks[0].att, FastMultiHeadAttention)
