"""What the benchmarks share: the repository on the import path, timing that is fair on a busy
machine, and a line describing the machine the figures came from."""

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_DIR))  # the lettered scripts are imported as modules

from plumbing import get_device  # noqa: E402  (needs the path above)


def synchronize(device):
    """Wait for queued GPU work, so that a timer measures the work and not its queuing."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def time_paths(paths, device, repeats, warmup=1):
    """Median seconds of each callable in `paths` (name -> fn). The paths take turns, so that a
    load that comes and goes on a shared machine hits them all alike."""
    for _ in range(warmup):
        for fn in paths.values():
            fn()
    synchronize(device)
    times = {name: [] for name in paths}
    for _ in range(repeats):
        for name, fn in paths.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def load_average():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every system
        return float("nan")


def describe_machine(device):
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as file:
                name = next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return (f"device {device} ({name}), {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch "
            f"threads, torch {torch.__version__}, load average {load_average():.2f}")


def add_common_args(parser):
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice, usually one per core)")


def setup_from_args(args):
    """Apply --threads; return the --device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return get_device(args.device)
