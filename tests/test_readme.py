"""The README's Quickstart is exactly two one-line commands, and CI runs the second one verbatim."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def quickstart_commands():
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Quickstart\n(.*?)(?=^## )", text, re.S | re.M).group(1)
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_quickstart_has_two_one_line_commands():
    commands = quickstart_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert quickstart_commands()[1] in ci_lines


def test_reproduced_results_are_generated_from_the_committed_json():
    """The README's "Reproduced results" tables are the output of benchmarks/reproduction_table.py (Bartunov et
    al.) and benchmarks/xiao_table.py (Xiao et al.) for the committed result folders, character for character:
    generated, never typed."""
    import os
    import subprocess
    import sys
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"<!-- (reproduction_table|xiao_table)\.py (\S+) -->\n(.*?)<!-- end -->", text, re.S)
    assert {script for script, _, _ in blocks} == {"reproduction_table", "xiao_table"}, \
        "README lacks a generated reproduction block"
    for script, folder, shown in blocks:
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{script}.py"), str(ROOT / folder)],
                             capture_output=True, text=True, check=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
        assert shown == out, folder
