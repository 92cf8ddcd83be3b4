"""PyTorch in a nutshell: tensors, autograd, a training loop, saving, devices, DDP (appendix A).

PyTorch gives three things: tensors (arrays that also run on a GPU), autograd (gradients computed
for you by back-propagation) and building blocks for models and training (nn.Module, Dataset,
DataLoader, optimizers). Training repeats forward pass, loss, backward pass, optimizer step; with
DistributedDataParallel each process trains a copy on its share of the data, gradients averaged.

Run: python y_neural_network_basics.py [--device cpu] [--quick]
     torchrun --nproc_per_node=2 y_neural_network_basics.py --ddp    (two processes, A.9)
"""

import argparse
import os

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from plumbing import (ScriptError, add_device_arg, ensure_writable, get_device, output_path, outputs_folder,
                      run_main, write_atomically)

NUM_EPOCHS = 3       # the book's training loop runs 3 epochs ...
LEARNING_RATE = 0.5  # ... of plain SGD with this learning rate
BATCH_SIZE = 2
SEED = 123

DDP_COMMAND = "torchrun --nproc_per_node=2 y_neural_network_basics.py --ddp"


class NeuralNetwork(torch.nn.Module):
    """A multilayer perceptron with two hidden layers (30 and 20 units) and ReLU activations."""

    def __init__(self, num_inputs, num_outputs):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(num_inputs, 30),  # 1st hidden layer
            torch.nn.ReLU(),
            torch.nn.Linear(30, 20),  # 2nd hidden layer
            torch.nn.ReLU(),
            torch.nn.Linear(20, num_outputs),  # output layer
        )

    def forward(self, x):
        logits = self.layers(x)  # no softmax here: cross_entropy applies it, more stably
        return logits


class ToyDataset(Dataset):
    def __init__(self, X, y):
        self.features = X
        self.labels = y

    def __getitem__(self, index):
        one_x = self.features[index]
        one_y = self.labels[index]
        return one_x, one_y

    def __len__(self):
        return self.labels.shape[0]


def make_toy_data():
    """The book's five training points and two test points: two clusters in 2D, labels 0 and 1."""
    X_train = torch.tensor([
        [-1.2, 3.1],
        [-0.9, 2.9],
        [-0.5, 2.6],
        [2.3, -1.1],
        [2.7, -1.5],
    ])
    y_train = torch.tensor([0, 0, 0, 1, 1])
    X_test = torch.tensor([
        [-0.8, 2.8],
        [2.6, -1.6],
    ])
    y_test = torch.tensor([0, 1])
    return X_train, y_train, X_test, y_test


def logistic_regression_grads(y, x1, w1, b):
    """The one-neuron logistic regression of A.3-A.4: forward pass, loss, and the gradients of the
    loss with respect to w1 and b, once with torch.autograd.grad and once with backward()."""
    w1 = torch.tensor(w1, requires_grad=True)
    b = torch.tensor(b, requires_grad=True)
    z = x1 * w1 + b  # net input
    a = torch.sigmoid(z)  # activation, the predicted probability of class 1
    loss = F.binary_cross_entropy(a, y)

    # retain_graph keeps the graph alive so that it can be differentiated again below
    grad_L_w1 = torch.autograd.grad(loss, w1, retain_graph=True)[0]
    grad_L_b = torch.autograd.grad(loss, b, retain_graph=True)[0]
    loss.backward()  # what training uses: fills .grad of every leaf that requires grad
    return {"a": a.detach(), "loss": loss.detach(), "grad_L_w1": grad_L_w1, "grad_L_b": grad_L_b,
            "w1.grad": w1.grad, "b.grad": b.grad}


def train_model(model, train_loader, optimizer, num_epochs, device, prefix=""):
    """The training loop of A.7; returns the loss of every batch."""
    losses = []
    for epoch in range(num_epochs):
        if isinstance(train_loader.sampler, DistributedSampler):
            train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on all ranks
        model.train()
        for batch_idx, (features, labels) in enumerate(train_loader):
            features, labels = features.to(device), labels.to(device)
            logits = model(features)
            loss = F.cross_entropy(logits, labels)

            optimizer.zero_grad()  # otherwise gradients add up across batches
            loss.backward()
            optimizer.step()

            losses.append(loss.item())
            print(f"{prefix}Epoch: {epoch + 1:03d}/{num_epochs:03d}"
                  f" | Batch {batch_idx:03d}/{len(train_loader):03d}"
                  f" | Train Loss: {loss:.2f}", flush=True)  # whole lines, even from many ranks
        model.eval()
    return losses


def compute_accuracy(model, dataloader, device=None):
    """Fraction of correctly classified examples; device defaults to where the model is."""
    if device is None:
        device = next(model.parameters()).device
    model.eval()
    correct = 0.0
    total_examples = 0
    for features, labels in dataloader:
        features, labels = features.to(device), labels.to(device)
        with torch.no_grad():
            logits = model(features)
        predictions = torch.argmax(logits, dim=1)
        correct += torch.sum(predictions == labels).item()
        total_examples += len(labels)
    return correct / total_examples


def show_tensors():
    """A.2: tensors of rank 0-3, their dtypes, shapes and the common operations on them."""
    tensor0d = torch.tensor(1)
    tensor1d = torch.tensor([1, 2, 3])
    tensor2d = torch.tensor([[1, 2], [3, 4]])
    tensor3d = torch.tensor([[[1, 2], [3, 4]], [[5, 6], [7, 8]]])
    for name, tensor in [("tensor0d", tensor0d), ("tensor1d", tensor1d), ("tensor2d", tensor2d),
                         ("tensor3d", tensor3d)]:
        print(f"{name}: ndim {tensor.ndim}, shape {tuple(tensor.shape)}")
    print("dtype of integers:", tensor1d.dtype)
    print("dtype of floats:", torch.tensor([1.0, 2.0, 3.0]).dtype)
    print("converted with .to(torch.float32):", tensor1d.to(torch.float32).dtype,
          "(32-bit floats: enough precision, half the memory of float64)")

    tensor2d = torch.tensor([[1, 2, 3], [4, 5, 6]])
    print("\ntensor2d:\n", tensor2d, "\nshape:", tensor2d.shape)
    print("reshape(3, 2):\n", tensor2d.reshape(3, 2))
    print("view(3, 2) (same, needs contiguous memory):\n", tensor2d.view(3, 2))
    print("transpose .T:\n", tensor2d.T)
    print("matrix product tensor2d.matmul(tensor2d.T):\n", tensor2d.matmul(tensor2d.T))
    print("the same with @:\n", tensor2d @ tensor2d.T)


def show_autograd():
    """A.3-A.4: the loss of one logistic-regression neuron and its gradients."""
    y = torch.tensor([1.0])  # true label
    x1 = torch.tensor([1.1])  # input feature
    w1, b = 2.2, 0.0  # weight and bias
    result = logistic_regression_grads(y, x1, w1=[w1], b=[b])
    print(f"prediction a = sigmoid(x1 * w1 + b) = {result['a'].item():.4f}, "
          f"binary cross-entropy loss = {result['loss'].item():.4f}")
    print("torch.autograd.grad:", f"grad L_w1 = {result['grad_L_w1'].item():.4f},",
          f"grad L_b = {result['grad_L_b'].item():.4f}")
    print("loss.backward():    ", f"w1.grad = {result['w1.grad'].item():.4f},",
          f"b.grad = {result['b.grad'].item():.4f}")
    # by the chain rule, dL/dz = a - y for sigmoid + binary cross-entropy, and dz/dw1 = x1
    a = result["a"]
    print("by hand:            ", f"(a - y) * x1 = {((a - y) * x1).item():.4f},",
          f"(a - y) = {(a - y).item():.4f}")
    show_backpropagation(y, x1, w1, b)


def backpropagation_by_hand(y, x1, w1, b):
    """The chain rule for the neuron above, one local derivative per step of the forward pass,
    multiplied together from the loss backwards, as loss.backward() does."""
    z = x1 * w1 + b
    a = torch.sigmoid(z)
    dL_da = -y / a + (1 - y) / (1 - a)  # binary cross-entropy L = -(y log a + (1 - y) log(1 - a))
    da_dz = a * (1 - a)                 # the sigmoid's slope
    dL_dz = dL_da * da_dz               # simplifies to a - y
    return {"z": z, "a": a, "dL/da": dL_da, "da/dz": da_dz, "dL/dz": dL_dz,
            "dL/dw1": dL_dz * x1,      # dz/dw1 = x1
            "dL/db": dL_dz * 1.0}      # dz/db = 1


def show_backpropagation(y, x1, w1, b):
    print("\nback-propagation in plain terms: the forward pass records every operation; backward()")
    print("goes through them in reverse and, at each one, multiplies the gradient that arrives from")
    print("the loss by the operation's own local derivative (the chain rule), so a single backward")
    print("pass gives the gradient for every weight, however many layers lie between it and the loss:")
    steps = backpropagation_by_hand(y, x1, w1, b)
    print(f"  forward:  z = x1 * w1 + b = {steps['z'].item():.4f}, a = sigmoid(z) = {steps['a'].item():.4f}")
    for name, rule in (("dL/da", "-y / a + (1 - y) / (1 - a)"), ("da/dz", "a * (1 - a)"),
                       ("dL/dz", "dL/da * da/dz"), ("dL/dw1", "dL/dz * x1"), ("dL/db", "dL/dz * 1")):
        print(f"  backward: {name:<6} = {rule:<26} = {steps[name].item():.4f}")


def show_network():
    """A.5: a network with 50 inputs and 3 outputs, its parameters and a forward pass."""
    model = NeuralNetwork(50, 3)
    print(model)
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("Total number of trainable model parameters:", num_params)
    print("first layer's weight shape:", model.layers[0].weight.shape)

    torch.manual_seed(123)  # the same random initial weights as the book
    model = NeuralNetwork(50, 3)
    print("first layer's weights (seed 123):\n", model.layers[0].weight)
    torch.manual_seed(123)
    X = torch.rand((1, 50))
    out = model(X)
    print("logits for a random input:", out)
    with torch.no_grad():  # inference only: no graph needed
        out = torch.softmax(model(X), dim=1)
    print("class-membership probabilities:", out)


def save_weights(model, path):
    """torch.save(model.state_dict(), path), written atomically: a full disk keeps the earlier file."""
    write_atomically(path, lambda temp_path: torch.save(model.state_dict(), temp_path))


def main_single(args):
    device = get_device(args.device)
    ensure_writable(outputs_folder(args.quick))  # before the training, not after it
    if not args.quick:
        print("== A.2 tensors ==")
        show_tensors()
        print("\n== A.3-A.4 autograd ==")
        show_autograd()
        print("\n== A.5 a multilayer neural network ==")
        show_network()

    print("\n== A.6 a dataset and data loaders ==")
    X_train, y_train, X_test, y_test = make_toy_data()
    train_ds = ToyDataset(X_train, y_train)
    test_ds = ToyDataset(X_test, y_test)
    print("training examples:", len(train_ds), "| test examples:", len(test_ds))
    torch.manual_seed(SEED)  # the shuffling order depends on the random seed
    train_loader = DataLoader(train_ds, batch_size=BATCH_SIZE, shuffle=True, num_workers=0)
    if not args.quick:
        for idx, (x, y) in enumerate(train_loader):
            print(f"Batch {idx + 1}:", x, y)
        print("the last batch has one example; drop_last=True drops it, since a very small batch "
              "makes a noisy update:")
    train_loader = DataLoader(train_ds, batch_size=BATCH_SIZE, shuffle=True, num_workers=0,
                              drop_last=True)
    test_loader = DataLoader(test_ds, batch_size=BATCH_SIZE, shuffle=False, num_workers=0)
    if not args.quick:
        for idx, (x, y) in enumerate(train_loader):
            print(f"Batch {idx + 1}:", x, y)

    print(f"\n== A.7-A.8 training on {device} ==")
    torch.manual_seed(SEED)
    model = NeuralNetwork(num_inputs=2, num_outputs=2)
    model.to(device)  # the data batches are moved to the same device inside train_model
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    train_model(model, train_loader, optimizer, NUM_EPOCHS, device)
    num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print("Total number of trainable model parameters:", num_params)

    with torch.no_grad():
        outputs = model(X_train.to(device))
    probas = torch.softmax(outputs, dim=1)
    torch.set_printoptions(sci_mode=False)
    print("class probabilities on the training set:\n", probas.cpu())
    predictions = torch.argmax(outputs, dim=1)
    print("predictions:", predictions.cpu(), "| labels:", y_train)
    train_acc = compute_accuracy(model, train_loader, device)
    test_acc = compute_accuracy(model, test_loader, device)
    print(f"Training accuracy: {train_acc:.2f} | Test accuracy: {test_acc:.2f}")

    path = output_path("appendix-a-model.pth", args.quick)  # the book's model.pth, with a name of its own
    save_weights(model, path)  # the weights only, not the Python class
    restored = NeuralNetwork(2, 2)  # the architecture must be rebuilt before loading the weights
    restored.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    restored.to(device)
    with torch.no_grad():
        same = torch.equal(restored(X_train.to(device)), outputs)
    print(f"saved {path}; the reloaded model gives the same outputs: {same}")
    print(f"\nNext, A.9: train with two processes (works without a GPU): {DDP_COMMAND}")


def ddp_setup(device_name=None, command=DDP_COMMAND):
    """Join the process group that torchrun prepared; return (rank, world_size, device). `command`
    is the torchrun command line to suggest when the script was not started by torchrun.

    torchrun starts one process per rank and tells each its place through environment variables.
    GPUs talk through NCCL; CPUs (also on macOS and Windows, where NCCL does not exist) through gloo."""
    missing = [key for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if key not in os.environ]
    if missing:
        raise ScriptError(f"data parallel training needs the environment variables torchrun sets "
                          f"({', '.join(missing)} missing); start it with: {command}  (or: python "
                          f"-m torch.distributed.run{command.removeprefix('torchrun')})")
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])

    device = get_device(device_name) if device_name else None
    if device is not None and device.type == "mps":
        raise ScriptError("torch.distributed cannot train on mps; use --device cpu (gloo)")
    use_cuda = torch.cuda.is_available() if device is None else device.type == "cuda"
    if use_cuda:
        num_gpus = torch.cuda.device_count()
        if local_rank >= num_gpus:
            raise ScriptError(f"torchrun started more processes per machine than the {num_gpus} "
                              f"visible GPU(s); use --nproc_per_node={num_gpus}, or add --device cpu "
                              "to train on the CPU with gloo")
        device = torch.device("cuda", local_rank)  # one GPU per process
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    torch.distributed.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return rank, world_size, device


def ddp_train(num_epochs=NUM_EPOCHS, device_name=None):
    """A.9: every rank trains a replica on its own shard of the data; DDP averages the gradients
    across ranks in backward(), so all replicas take the same step. Returns (model, train_acc,
    test_acc); rank 0 saves outputs/appendix-a-model-ddp.pth."""
    rank, world_size, device = ddp_setup(device_name)
    try:
        X_train, y_train, X_test, y_test = make_toy_data()
        train_ds = ToyDataset(X_train, y_train)
        test_ds = ToyDataset(X_test, y_test)
        # DistributedSampler shuffles and hands each rank a different part of the training set
        # (so DataLoader's own shuffle stays off)
        train_loader = DataLoader(train_ds, batch_size=BATCH_SIZE, shuffle=False, drop_last=True,
                                  sampler=DistributedSampler(train_ds))

        torch.manual_seed(SEED)
        model = NeuralNetwork(num_inputs=2, num_outputs=2).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        train_model(ddp_model, train_loader, optimizer, num_epochs, device, prefix=f"[rank {rank}] ")
        # Drop the DDP wrapper while the process group lives: were the wrapper the group's last
        # holder, its deletion would tear the group down without releasing Python's lock, which
        # gloo's threads may still need (a rare hang at exit, pytorch/pytorch#56297)
        del ddp_model

        # every rank scores the full sets: the replicas hold the same weights, so they agree
        train_acc = compute_accuracy(model, DataLoader(train_ds, batch_size=BATCH_SIZE), device)
        test_acc = compute_accuracy(model, DataLoader(test_ds, batch_size=BATCH_SIZE), device)
        print(f"[rank {rank}] Training accuracy: {train_acc:.2f} | Test accuracy: {test_acc:.2f}",
              flush=True)
        if rank == 0:  # one writer, or the ranks would race on the same file
            path = output_path("appendix-a-model-ddp.pth")
            save_weights(model, path)
            print(f"[rank 0] saved {path} ({world_size} processes, backend "
                  f"{torch.distributed.get_backend()})")
        return model, train_acc, test_acc
    finally:
        torch.distributed.destroy_process_group()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_arg(parser)
    parser.add_argument("--quick", action="store_true",
                        help="skip the tensor, autograd and printout sections; train and save only "
                             "(the whole run takes seconds either way)")
    parser.add_argument("--ddp", action="store_true",
                        help=f"distributed data parallel training, one process per rank: {DDP_COMMAND}")
    args = parser.parse_args()
    if args.ddp:
        ensure_writable(outputs_folder())  # rank 0 saves there after the training
        ddp_train(NUM_EPOCHS, args.device)
    else:
        main_single(args)


if __name__ == "__main__":
    run_main(main)
