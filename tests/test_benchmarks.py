"""The benchmarks run to the end on a tiny setting and print what README quotes from them. Their
figures are not asserted (timings are no test); what they check themselves is: the generation
paths' ids agree."""

import re

from conftest import run_script


def test_pretraining_benchmark_compares_the_paths_and_profiles_them(tmp_path):
    result = run_script("benchmarks/bench_pretraining.py", "--device", "cpu", "--config", "small",
                        "--contexts", "32", "--steps", "1", "--warmup", "0", "--threads", "1",
                        "--dtype", "float32", "--paths", "book", "fast", "hf", "--profile",
                        data_dir=tmp_path / "data", outputs_dir=tmp_path / "outputs")
    out = result.stdout
    assert "load average" in out and "matmul peak (one large torch.mm): float32" in out
    for name in ("book path (float32)", "fast path", "transformers GPT2LMHeadModel"):
        assert re.search(rf"{re.escape(name)} +\d+ tokens/s .* GFLOP/s = +[\d.]+% of float32", out), name
    assert re.search(r"fast path is [\d.]+x book path \(float32\), [\d.]+x transformers", out)
    # --profile: one operator table a path, the matmuls in each
    assert out.count("2 steps under torch.profiler") == 3
    assert out.count("aten::mm ") >= 3


def test_generation_benchmark_paths_give_the_same_ids(tmp_path):
    result = run_script("benchmarks/bench_generation.py", "--device", "cpu", "--config", "small",
                        "--max-new-tokens", "8", "--rounds", "1", "--threads", "1",
                        data_dir=tmp_path / "data", outputs_dir=tmp_path / "outputs")
    assert "All paths give identical ids: True" in result.stdout
    assert re.search(r"fast path, KV cache +[\d.]+ tokens/s .* weights read +[\d.]+ GB/s", result.stdout)


def test_allocator_benchmark_runs_both_settings_in_two_processes(tmp_path):
    result = run_script("benchmarks/bench_allocator.py", "--device", "cpu", "--config", "small",
                        "--context", "32", "--steps", "3", "--threads", "1", "--paths", "fast",
                        data_dir=tmp_path / "data", outputs_dir=tmp_path / "outputs")
    assert "allocator glibc's default in one process, freed memory kept in the other" in result.stdout
    for name in ("fast path",):
        line = re.search(rf"{re.escape(name)} +system +\d+ tokens/s, +(\d+) page faults a step; keep +\d+ "
                         r"tokens/s, +(\d+) page faults a step; kept memory [\d.]+x", result.stdout)
        assert line and int(line[2]) < int(line[1]) / 10, result.stdout  # kept memory: (next to) no new pages


def test_attention_benchmark_times_every_class_and_fast_dropout(tmp_path):
    result = run_script("benchmarks/bench_attention.py", "--device", "cpu", "--contexts", "8",
                        "--emb-dim", "16", "--heads", "2", "--dropout", "0.1", "--repeats", "1",
                        "--threads", "1",
                        data_dir=tmp_path / "data", outputs_dir=tmp_path / "outputs")
    difference = re.search(r"fast vs book max \|difference\| ([\d.e+-]+)", result.stdout)
    assert difference and float(difference[1]) < 1e-5  # without dropout's masks they agree
    for name in ("MultiHeadAttentionWrapper (3.6.1)", "MultiHeadAttention (3.6.2)", "FastMultiHeadAttention",
                 "FastMultiHeadAttention, FastDropout"):
        assert re.search(rf"{re.escape(name)} +[\d.]+ ms +[\d.]+x the book's", result.stdout), name
