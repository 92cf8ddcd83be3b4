"""Appendix E: LoRA layers, the book's parameter counts on the GPT-2 124M architecture, gradients
reaching only the adapters, merging, and the alpha / rank switch."""

import math

import pytest
import torch
import torch.nn as nn

import w_finetune_classifier as w
import z_lora as z
from n_dummy_gpt_model import GPT_CONFIG_124M
from s_gpt_model import GPTModel
from checkpoints import save_checkpoint

TINY_CFG = {"vocab_size": 64, "context_length": 16, "emb_dim": 32, "n_heads": 2, "n_layers": 2,
            "drop_rate": 0.0, "qkv_bias": True}


def tiny_lora_classifier(rank=4, alpha=8, scale_by_rank=False):
    torch.manual_seed(0)
    model = GPTModel(TINY_CFG)
    w.build_classifier(model, num_classes=2)
    for param in model.parameters():
        param.requires_grad = False
    z.replace_linear_with_lora(model, rank=rank, alpha=alpha, scale_by_rank=scale_by_rank)
    return model


def randomize_lora_b(model, seed=1):
    """After training B is no longer zero; random values stand in for that."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, z.LoRALayer):
            with torch.no_grad():
                module.B.normal_(std=0.05)


def test_lora_layer_initialisation():
    torch.manual_seed(0)
    layer = z.LoRALayer(in_dim=10, out_dim=6, rank=4, alpha=8)
    torch.manual_seed(0)
    expected_A = torch.empty(10, 4)
    nn.init.kaiming_uniform_(expected_A, a=math.sqrt(5))
    assert torch.equal(layer.A, expected_A)
    assert layer.A.abs().max() <= 1 / math.sqrt(4)  # the bound for fan_in = rank and a = sqrt(5)
    assert layer.A.std() > 0.1
    assert layer.B.shape == (4, 6) and torch.count_nonzero(layer.B) == 0
    assert layer.scaling == 8
    with pytest.raises(ValueError, match="rank"):
        z.LoRALayer(10, 6, rank=0, alpha=8)


def test_wrapped_layer_equals_base_layer_at_initialisation():
    torch.manual_seed(0)
    linear = nn.Linear(12, 7)
    wrapped = z.LinearWithLoRA(linear, rank=3, alpha=16)
    x = torch.randn(2, 5, 12)
    assert wrapped.linear is linear
    assert torch.equal(wrapped(x), linear(x))


def test_lora_forward_is_base_plus_alpha_times_x_A_B():
    torch.manual_seed(0)
    linear = nn.Linear(12, 7)
    wrapped = z.LinearWithLoRA(linear, rank=3, alpha=16)
    with torch.no_grad():
        wrapped.lora.B.normal_()
    x = torch.randn(2, 5, 12)
    expected = linear(x) + 16 * (x @ wrapped.lora.A @ wrapped.lora.B)
    assert torch.allclose(wrapped(x), expected, atol=1e-5)
    assert not torch.allclose(wrapped(x), linear(x), atol=1e-3)


def test_scale_by_rank_divides_the_update_by_the_rank():
    torch.manual_seed(0)
    book = z.LoRALayer(12, 7, rank=4, alpha=16)
    paper = z.LoRALayer(12, 7, rank=4, alpha=16, scale_by_rank=True)
    with torch.no_grad():
        book.B.normal_()
        paper.A.copy_(book.A)
        paper.B.copy_(book.B)
    x = torch.randn(3, 12)
    assert book.scaling == 16 and paper.scaling == 4.0
    assert torch.allclose(paper(x) * 4, book(x), atol=1e-5)
    # the switch travels through replace_linear_with_lora
    model = tiny_lora_classifier(rank=4, alpha=8, scale_by_rank=True)
    scalings = {m.scaling for m in model.modules() if isinstance(m, z.LoRALayer)}
    assert scalings == {2.0}


def test_book_parameter_counts_on_the_124M_architecture():
    cfg = dict(GPT_CONFIG_124M, qkv_bias=True)  # GPT-2's query/key/value layers have biases
    with torch.device("meta"):  # shapes only: no memory, no weights, no download
        model = GPTModel(cfg)
        model.out_head = nn.Linear(cfg["emb_dim"], 2)
        assert z.count_parameters(model) == 124_441_346
        for param in model.parameters():
            param.requires_grad = False
        assert z.count_parameters(model) == 0
        z.replace_linear_with_lora(model, rank=16, alpha=16)
    assert z.count_parameters(model) == 2_666_528
    assert z.count_parameters(model, trainable_only=False) == 124_441_346 + 2_666_528
    lora_layers = [m for m in model.modules() if isinstance(m, z.LinearWithLoRA)]
    # q, k, v, out_proj and two feed-forward layers per block, and the head
    assert len(lora_layers) == 12 * 6 + 1
    assert all(layer.lora.A.device.type == "meta" for layer in lora_layers)


def test_every_linear_is_wrapped_once():
    torch.manual_seed(0)
    plain = GPTModel(TINY_CFG)
    num_linear = sum(isinstance(m, nn.Linear) for m in plain.modules())
    model = tiny_lora_classifier()
    assert sum(isinstance(m, z.LinearWithLoRA) for m in model.modules()) == num_linear
    assert not any(isinstance(m, nn.Linear) and not isinstance(parent, z.LinearWithLoRA)
                   for parent in model.modules() for m in parent.children())


def test_only_lora_parameters_receive_gradients_and_change():
    model = tiny_lora_classifier()
    model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    torch.manual_seed(1)
    inputs, targets = torch.randint(0, 64, (4, 10)), torch.tensor([0, 1, 1, 0])
    for _ in range(2):  # the first step moves B off zero, the second then moves A too
        optimizer.zero_grad()
        w.calc_loss_batch(inputs, targets, model, torch.device("cpu")).backward()
        optimizer.step()
    lora_names = {name for name, _ in model.named_parameters() if ".lora." in name}
    assert lora_names and all(name.endswith((".A", ".B")) for name in lora_names)
    for name, param in model.named_parameters():
        if name in lora_names:
            assert param.grad is not None and not torch.equal(param, before[name]), name
        else:
            assert param.grad is None and torch.equal(param, before[name]), name


def test_merged_and_unmerged_outputs_agree(tmp_path):
    model = tiny_lora_classifier(rank=4, alpha=8)
    randomize_lora_b(model)
    model.eval()
    torch.manual_seed(2)
    inputs = torch.randint(0, 64, (3, 12))
    with torch.no_grad():
        lora_logits = model(inputs)
    z.merge_lora(model)
    with torch.no_grad():
        merged_logits = model(inputs)
    assert not any(isinstance(m, (z.LinearWithLoRA, z.LoRALayer)) for m in model.modules())
    assert torch.allclose(merged_logits, lora_logits, atol=1e-5)

    # the merged weights are W + alpha * (A @ B)^T, and without the update the logits differ
    fresh = tiny_lora_classifier(rank=4, alpha=8)
    randomize_lora_b(fresh)
    head = fresh.out_head
    assert torch.allclose(model.out_head.weight,
                          head.linear.weight + 8 * (head.lora.A @ head.lora.B).T, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(fresh.out_head.linear(torch.ones(1, 32)),
                                  model.out_head(torch.ones(1, 32)), atol=1e-3)

    # a merged model is a plain chapter-6 classifier again
    path = tmp_path / "merged.pth"
    save_checkpoint(path, model, TINY_CFG, num_classes=2)
    reloaded, _ = w.load_classifier(path)
    with torch.no_grad():
        assert torch.equal(reloaded(inputs), merged_logits)
