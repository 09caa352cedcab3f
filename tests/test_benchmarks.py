"""The benchmark scripts run end to end (one small shape, one repeat) and write their JSON: a benchmark that
breaks with the package (an op it calls loses its autograd, a renamed function) fails here, not on the GPU
machine."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNS = {
    "bench_lc2d": ["--device", "cpu", "--shapes", "mnist-L1", "--batch", "2", "--repeats", "1", "--warmup", "1",
                   "--feedback", "--jax", "--algorithm", "all"],  # the JAX row where jax is installed, a note where it is not
    "bench_feedback": ["--device", "cpu", "--shapes", "mnist-fc2,mnist-c1,mnist-lc1", "--batch", "2", "--repeats",
                       "1", "--warmup", "0", "--min-time", "0"],
    "bench_linear": ["--shapes", "mnist-fc-hidden", "--batch", "2", "--repeats", "1", "--warmup", "0"],
    "bench_tp": ["--nets", "mnist-fc", "--batch", "2", "--repeats", "1", "--warmup", "0"],
}


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_script_runs(script, tmp_path):
    out = tmp_path / f"{script}.json"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", f"{script}.py"), *RUNS[script],
                           "--json", str(out)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result  # a non-empty record
    if script == "bench_lc2d":
        from bioplaus_kernels.backends import ALGORITHMS
        for row in result["rows"]:
            assert sorted(row["algo_ms"]) == sorted(ALGORITHMS["cpu"]) and all(v > 0 for v in row["algo_ms"].values())
            assert set(row["selected"].values()) <= set(ALGORITHMS["cpu"])
        # the default table's builder reads the run: one winner per (pass, class, dtype)
        table = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "lc2d_selection_table.py"), "--print",
                                str(out)], capture_output=True, text=True, check=True).stdout
        rows = [line for line in table.splitlines() if line.startswith('    {"cpu"')]
        assert sorted(line.split('"')[3] for line in rows) == ["backward_input", "backward_weight", "forward"]
