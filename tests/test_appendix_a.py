"""Appendix A: autograd against the chain rule, the toy network's training as in the book, a
real two-process DistributedDataParallel run on the CPU with gloo, and both saves on a full disk."""

import argparse
import contextlib
import gc
import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from conftest import run_ranks
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

import y_neural_network_basics as y_nn
from plumbing import ScriptError


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


@pytest.mark.parametrize("y, x1, w1, b", [(1.0, 1.1, 2.2, 0.0), (0.0, -0.7, 0.3, 0.5)])
def test_autograd_gradients_equal_the_chain_rule(y, x1, w1, b):
    result = y_nn.logistic_regression_grads(torch.tensor([y]), torch.tensor([x1]), [w1], [b])
    a = sigmoid(x1 * w1 + b)
    # binary cross-entropy after a sigmoid: dL/dz = a - y, and z = x1 * w1 + b
    assert result["a"].item() == pytest.approx(a, rel=1e-6)
    assert result["loss"].item() == pytest.approx(-(y * math.log(a) + (1 - y) * math.log(1 - a)), rel=1e-5)
    for key in ("grad_L_w1", "w1.grad"):
        assert result[key].item() == pytest.approx((a - y) * x1, rel=1e-5)
    for key in ("grad_L_b", "b.grad"):
        assert result[key].item() == pytest.approx(a - y, rel=1e-5)


def test_autograd_matches_the_book_numbers():
    result = y_nn.logistic_regression_grads(torch.tensor([1.0]), torch.tensor([1.1]), [2.2], [0.0])
    assert round(result["grad_L_w1"].item(), 4) == -0.0898
    assert round(result["grad_L_b"].item(), 4) == -0.0817


def test_network_size_and_seeded_outputs_match_the_book():
    model = y_nn.NeuralNetwork(50, 3)
    # 50*30+30 + 30*20+20 + 20*3+3
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2213
    assert y_nn.NeuralNetwork(2, 2).layers[-1].out_features == 2
    torch.manual_seed(123)
    model = y_nn.NeuralNetwork(50, 3)
    torch.manual_seed(123)
    X = torch.rand((1, 50))
    with torch.no_grad():
        logits = model(X)
    assert torch.allclose(logits, torch.tensor([[-0.1262, 0.1080, -0.1792]]), atol=5e-5)
    assert torch.allclose(torch.softmax(logits, dim=1), torch.tensor([[0.3113, 0.3934, 0.2952]]), atol=5e-5)


def make_loaders():
    X_train, y_train, X_test, y_test = y_nn.make_toy_data()
    train_ds, test_ds = y_nn.ToyDataset(X_train, y_train), y_nn.ToyDataset(X_test, y_test)
    torch.manual_seed(123)
    train_loader = DataLoader(train_ds, batch_size=2, shuffle=True, num_workers=0, drop_last=True)
    test_loader = DataLoader(test_ds, batch_size=2, shuffle=False, num_workers=0)
    return train_ds, train_loader, test_loader


def test_toy_dataset_and_loader():
    train_ds, train_loader, _ = make_loaders()
    assert len(train_ds) == 5
    x, label = train_ds[3]
    assert x.tolist() == pytest.approx([2.3, -1.1]) and label.item() == 1
    assert len(train_loader) == 2  # 5 examples in batches of 2, the odd one dropped
    seen = [label for _, labels in train_loader for label in labels.tolist()]
    assert len(seen) == 4 and sorted(seen) in ([0, 0, 0, 1], [0, 0, 1, 1])


def test_compute_accuracy_counts_correct_predictions():
    X_train, y_train, _, _ = y_nn.make_toy_data()
    torch.manual_seed(0)
    model = y_nn.NeuralNetwork(2, 2)
    with torch.no_grad():
        expected = (model(X_train).argmax(dim=1) == y_train).float().mean().item()
    loader = DataLoader(y_nn.ToyDataset(X_train, y_train), batch_size=2)  # 2 + 2 + 1 examples
    assert y_nn.compute_accuracy(model, loader) == pytest.approx(expected)
    assert y_nn.compute_accuracy(model, loader, torch.device("cpu")) == pytest.approx(expected)


def test_toy_network_trains_to_full_accuracy_as_in_the_book(capsys):
    _, train_loader, test_loader = make_loaders()
    torch.manual_seed(123)
    model = y_nn.NeuralNetwork(num_inputs=2, num_outputs=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = y_nn.train_model(model, train_loader, optimizer, num_epochs=3, device=torch.device("cpu"))
    assert [round(loss, 2) for loss in losses] == [0.75, 0.65, 0.44, 0.13, 0.03, 0.00]
    assert "Epoch: 003/003 | Batch 001/002 | Train Loss: 0.00" in capsys.readouterr().out
    assert y_nn.compute_accuracy(model, train_loader) == 1.0
    assert y_nn.compute_accuracy(model, test_loader) == 1.0


def test_ddp_without_torchrun_says_how_to_start_it(monkeypatch):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ScriptError, match="torchrun --nproc_per_node=2 y_neural_network_basics.py --ddp"):
        y_nn.ddp_setup()


def ddp_worker(rank, world_size, results_dir):
    """One rank, started the way torchrun would start it (conftest.run_ranks). It also records
    whether a DDP wrapper was still alive when the process group was destroyed: the wrapper would
    then tear the group down while holding Python's lock, a rare hang at exit."""
    destroy = torch.distributed.destroy_process_group
    wrappers_alive = []

    def recording_destroy(*args, **kwargs):
        wrappers_alive.append(sum(isinstance(obj, DistributedDataParallel) for obj in gc.get_objects()))
        destroy(*args, **kwargs)

    torch.distributed.destroy_process_group = recording_destroy
    model, train_acc, test_acc = y_nn.ddp_train(num_epochs=3, device_name="cpu")
    torch.save({"state_dict": model.state_dict(), "accuracies": (train_acc, test_acc),
                "wrappers_alive": wrappers_alive}, f"{results_dir}/rank{rank}.pt")


def single_process_reference(world_size=2, num_epochs=3):
    """The same training in one process: each step sees the union of the ranks' batches, and the
    mean loss over it has the average of the ranks' gradients, which is what DDP applies."""
    X_train, y_train, _, _ = y_nn.make_toy_data()
    train_ds = y_nn.ToyDataset(X_train, y_train)
    torch.manual_seed(123)
    model = y_nn.NeuralNetwork(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for epoch in range(num_epochs):
        indices = []
        for rank in range(world_size):
            sampler = DistributedSampler(train_ds, num_replicas=world_size, rank=rank)
            sampler.set_epoch(epoch)
            indices += list(sampler)[:2]  # each rank's single full batch of 2 (drop_last)
        loss = F.cross_entropy(model(X_train[indices]), y_train[indices])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.state_dict()


def test_two_process_ddp_on_cpu_agrees_across_ranks(tmp_path):
    outputs_dir = tmp_path / "outputs"
    run_ranks(ddp_worker, str(tmp_path), env={"LLM_OUTPUTS_DIR": str(outputs_dir)})

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0["state_dict"].keys() == rank1["state_dict"].keys()
    for name, tensor in rank0["state_dict"].items():
        assert torch.equal(tensor, rank1["state_dict"][name]), name
    assert rank0["accuracies"] == rank1["accuracies"] == (1.0, 1.0)
    assert rank0["wrappers_alive"] == rank1["wrappers_alive"] == [0]

    reference = single_process_reference()
    torch.manual_seed(123)
    initial = y_nn.NeuralNetwork(2, 2).state_dict()
    for name, tensor in rank0["state_dict"].items():
        assert torch.allclose(tensor, reference[name], atol=1e-6), name
    assert not torch.equal(rank0["state_dict"]["layers.0.weight"], initial["layers.0.weight"])

    assert [p.name for p in outputs_dir.iterdir()] == ["appendix-a-model-ddp.pth"]  # by rank 0 only
    saved = torch.load(outputs_dir / "appendix-a-model-ddp.pth", weights_only=True)
    assert all(torch.equal(saved[name], rank0["state_dict"][name]) for name in saved)


@pytest.mark.parametrize("y, x1, w1, b", [(1.0, 1.1, 2.2, 0.0), (0.0, -0.7, 0.3, 0.5)])
def test_backpropagation_step_by_step_equals_autograd(y, x1, w1, b):
    steps = y_nn.backpropagation_by_hand(torch.tensor([y]), torch.tensor([x1]), w1, b)
    result = y_nn.logistic_regression_grads(torch.tensor([y]), torch.tensor([x1]), [w1], [b])
    a = sigmoid(x1 * w1 + b)

    def loss(a):
        return -(y * math.log(a) + (1 - y) * math.log(1 - a))

    h = 1e-6  # each local derivative against a central difference, the chain against autograd
    assert steps["dL/da"].item() == pytest.approx((loss(a + h) - loss(a - h)) / (2 * h), rel=1e-4)
    assert steps["da/dz"].item() == pytest.approx((sigmoid(x1 * w1 + b + h) - sigmoid(x1 * w1 + b - h))
                                                  / (2 * h), rel=1e-4)
    assert steps["dL/dz"].item() == pytest.approx(a - y, rel=1e-5)
    assert steps["dL/dw1"].item() == pytest.approx(result["w1.grad"].item(), rel=1e-5)
    assert steps["dL/db"].item() == pytest.approx(result["b.grad"].item(), rel=1e-5)


# ---- a full disk: one line, and the earlier model file intact ----

@contextlib.contextmanager
def full_disk(limit=1000):
    """Files of this process cannot grow past `limit` bytes (RLIMIT_FSIZE stands in for a full disk;
    with SIGXFSZ ignored the write fails with EFBIG)."""
    import resource  # POSIX only

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def assert_full_disk_message(message, path):
    assert message.startswith(f"could not write {path} (the write stopped early, as on a full disk: "
                              "[enforce fail at inline_container")
    assert message.endswith("; the earlier file there is unchanged. Free some disk space or make the folder "
                            "writable (LLM_OUTPUTS_DIR moves outputs/), then run again")
    assert "\n" not in message


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE stands in for a full disk")
def test_a_full_disk_keeps_the_earlier_model_and_says_so_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(y_nn, "output_path", lambda name, quick=False: tmp_path / name)
    monkeypatch.setattr(y_nn, "outputs_folder", lambda quick=False: tmp_path)
    path = tmp_path / "appendix-a-model.pth"
    path.write_bytes(b"the earlier model")
    with full_disk(), pytest.raises(ScriptError) as error:
        y_nn.main_single(argparse.Namespace(device="cpu", quick=True))
    assert_full_disk_message(str(error.value), path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name] and path.read_bytes() == b"the earlier model"


def ddp_full_disk_worker(rank, world_size, results_dir):
    """Rank 0 saves on a full disk; both ranks record how their run ended."""
    path = y_nn.output_path("appendix-a-model-ddp.pth")
    if rank == 0:
        path.write_bytes(b"the earlier model")
    outcome = "finished"
    with full_disk() if rank == 0 else contextlib.nullcontext():
        try:
            y_nn.ddp_train(num_epochs=1, device_name="cpu")
        except ScriptError as error:
            outcome = str(error)
    torch.save({"outcome": outcome, "path": str(path)}, f"{results_dir}/rank{rank}.pt")


@pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE stands in for a full disk")
def test_ddp_rank_0_on_a_full_disk_keeps_the_earlier_model(tmp_path):
    outputs_dir = tmp_path / "outputs"
    run_ranks(ddp_full_disk_worker, str(tmp_path), env={"LLM_OUTPUTS_DIR": str(outputs_dir)})
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert_full_disk_message(rank0["outcome"], outputs_dir / "appendix-a-model-ddp.pth")
    assert rank1["outcome"] == "finished"
    assert [p.name for p in outputs_dir.iterdir()] == ["appendix-a-model-ddp.pth"]
    assert (outputs_dir / "appendix-a-model-ddp.pth").read_bytes() == b"the earlier model"
