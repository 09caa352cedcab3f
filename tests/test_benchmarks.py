"""The benchmark scripts run end to end (one small shape, one repeat) and write their JSON: a benchmark that
breaks with the package (an op it calls loses its autograd, a renamed function) fails here, not on the GPU
machine."""
import json
import os
import runpy
import subprocess
import sys

import pytest
import torch

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
def test_benchmark_script_runs(script, tmp_path, monkeypatch, capsys):
    # In this process, as `python benchmarks/<script>.py ...` runs it (__main__, its own argv), without a
    # fresh interpreter's start; the CPU memory probes of bench_lc2d still run in processes of their own.
    out = tmp_path / f"{script}.json"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *RUNS[script], "--json", str(out)])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(os.path.join(ROOT, "benchmarks", f"{script}.py"), run_name="__main__")
        status = 0
    except SystemExit as e:
        status = e.code
    finally:
        torch.set_num_threads(threads)
    assert status in (0, None), capsys.readouterr()
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


# ``bioplaus bench OP`` from the installed package (no PYTHONPATH, run outside the checkout): one tiny custom
# shape each; the table's header names the medians, the ratios to the baseline and the time over the floor.
BENCH = {
    "lc2d": (["--shape", "8,8,2,4,3,2", "--no-memory"], ("step ms ours/base", "spdup", "t/floor")),
    "linear": (["--shape", "64,32"], ("F.linear", "w/F.l", "t/floor")),
    "feedback": (["--shape", "8,8,2,4,3,2", "--min-time", "0"], ("bt-usf", "ratio_to_bp", "bp/floor")),
    "tp": (["--shape", "8,8,2,4,3,2"], ("ref_dtp ms", "dtp/ref", "dtp/floor")),
}


def bench(*args, cwd):
    return subprocess.run([sys.executable, "-m", "bioplaus_kernels.train", "bench", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


@pytest.mark.slow
@pytest.mark.parametrize("op", sorted(BENCH))
def test_bioplaus_bench_runs_and_prints_the_table(op, tmp_path, monkeypatch, capsys):
    # lc2d as a user runs it, from the installed package in a folder outside the checkout; the others in this
    # process (the same command line, without a fresh interpreter's start)
    out = tmp_path / f"{op}.json"
    shape, header = BENCH[op]
    args = (op, *shape, "--device", "cpu", "--batch", "2", "--repeats", "1", "--warmup", "1", "--json", str(out))
    if op == "lc2d":
        proc = bench(*args, cwd=tmp_path)
        status, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    else:
        monkeypatch.chdir(tmp_path)
        status, stdout, stderr = bench_in_process(capsys, *args[1:], op=op)
    assert status == 0, stdout[-2000:] + stderr[-4000:]
    assert all(h in stdout for h in header), stdout
    result = json.loads(out.read_text())
    assert result["rows"]
    if op == "lc2d":  # the schema benchmarks/lc2d_selection_table.py and gpu_check.sh read
        assert result["settings"]["device"] == "cpu" and result["settings"]["tf32"] is False
        (shape,) = result["shapes"]
        assert (shape["name"], shape["K"], shape["kernel"], shape["stride"], shape["input"]) == \
            ("custom", 18, 3, 2, [2, 2, 8, 8])
        for row in result["rows"]:
            assert {"pass", "dtype", "shape", "ours_ms", "base_ms", "selected", "ours_over_floor"} <= set(row)


def test_bioplaus_bench_without_json_saves_nothing(tmp_path):
    proc = bench("linear", "--shape", "16,8", "--device", "cpu", "--batch", "2", "--repeats", "1", "--warmup", "0",
                 cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "result not saved" in proc.stdout and not list(tmp_path.iterdir())


def bench_in_process(capsys, *args, op=None):
    """(exit status, stdout, stderr) of ``bioplaus bench [OP] ARGS`` run in this process (no fresh interpreter's
    start; the lc2d cases run the real command)."""
    from bioplaus_kernels.train.cli import main

    try:
        status = main(["bench", *([op] if op else []), *args])
    except SystemExit as e:  # argparse's own errors
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("op,shape", [(op, "1,2,3,4") for op in sorted(BENCH)] +
                         [("lc2d", "8,8,x,4,3,2"), ("lc2d", "8,8,0,4,3,2"), ("linear", "papers")])
def test_bioplaus_bench_bad_shape_is_one_line_and_status_2(op, shape, capsys):
    status, _, err = bench_in_process(capsys, op, "--shape", shape, "--device", "cpu")
    assert status == 2, err
    (line,) = err.splitlines()
    assert line.startswith(f"bioplaus: error: bioplaus bench {op}: argument --shape: must be 'paper' or ") and \
        repr(shape) in line, line


def test_bioplaus_bench_tp_fc_net_needs_two_hidden_layers(capsys):
    status, _, err = bench_in_process(capsys, "tp", "--shape", "16,8,1", "--device", "cpu")
    assert status == 2 and err.count("\n") == 1 and "DEPTH must be >= 2" in err, err
