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

from fast_pretraining import fast_autocast_dtype  # noqa: E402  (needs the path above)
from plumbing import add_device_arg, freed_memory_can_be_kept, get_device  # noqa: E402


def synchronize(device):
    """Wait for queued GPU work, so that a timer measures the work and not its queuing."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# Untimed calls of each path first: with kept memory (plumbing.keep_freed_memory) the heap settles
# only by the third (a 124M fast step faulted 563,640 pages in, then 100,515, then none).
WARMUP_CALLS = 3


def time_paths(paths, device, repeats, warmup=WARMUP_CALLS):
    """Median seconds of each callable in `paths` (name -> fn), after `warmup` untimed calls each.
    The paths take turns, so that a load that comes and goes on a shared machine hits them all
    alike."""
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


def cpu_info(field):
    """A field of /proc/cpuinfo's first processor ("model name", "flags"), or "" where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            return next(line.split(":", 1)[1].strip() for line in file if line.startswith(field))
    except (OSError, StopIteration):
        return ""


def cpu_features():
    """What decides the CPU's speed here: PyTorch's kernel level, and whether bfloat16 is native."""
    flags = set(cpu_info("flags").split())
    shown = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    native_bf16 = fast_autocast_dtype(torch.device("cpu")) is not None
    return (f"kernels {torch.backends.cpu.get_cpu_capability()}, flags {' '.join(shown) or 'none listed'}, "
            f"native bfloat16 {'yes' if native_bf16 else 'no'}")


def describe_machine(device, allocator=None):
    """A line naming the device, threads, torch, the allocator setting (by default what run_main set:
    plumbing.keep_freed_memory, off with LLM_ALLOCATOR=system) and the load average."""
    if allocator is None:
        allocator = "freed memory kept" if freed_memory_can_be_kept() else "the C library's default"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_info('model name') or platform.processor() or platform.machine()}; {cpu_features()}"
    return (f"device {device} ({name}), {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch "
            f"threads, torch {torch.__version__}, allocator {allocator}, load average {load_average():.2f}")


def load_line():
    return f"(load average now {load_average():.2f})"


def best_seconds(fn, device, repeats=3):
    """The fastest of `repeats` timed calls after one untimed one: a machine's peak is its best run."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak_flops(device, dtype=torch.float32, n=None):
    """FLOP/s of one large square torch.mm in `dtype`: the most this machine's matmuls give."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / best_seconds(lambda: torch.mm(a, b), device)


def copy_bandwidth(device, megabytes=512):
    """Bytes/s read plus written by copying one large tensor: the memory bandwidth a run can use."""
    src = torch.ones(megabytes * 2 ** 20 // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_seconds(lambda: dst.copy_(src), device)


def add_common_args(parser):
    add_device_arg(parser)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice, usually one per core)")


def setup_from_args(args):
    """Apply --threads; return the --device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return get_device(args.device)
