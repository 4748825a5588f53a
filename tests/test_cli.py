"""The command line as a user runs it: a real subprocess, exit codes, one line per error."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, SPECS


def specserve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "models.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_validate_all_specs():
    result = specserve("validate", *map(str, SPECS))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("ok ") == len(SPECS)


def test_validate_reports_each_error_on_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: t\ntask: classification\ninput: {channels: 1, size: [28, 28]}\nnetwork:\n  - conv2: {out: 3}\n  - linaer: {}\n")
    result = specserve("validate", str(bad), str(ROOT / "specs" / "lenet.yaml"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{bad}:5:5 network[0].conv2: unknown layer 'conv2'")
    assert lines[1].startswith(f"{bad}:6:5 network[1].linaer: unknown layer 'linaer'")
    assert "Traceback" not in result.stderr
    assert "ok " in result.stdout  # the good spec is still checked


def test_summary_prints_the_table():
    result = specserve("summary", "specs/lenet.yaml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["layer", "type", "output", "params", "mult-adds"]
    assert "network[7].linear" in result.stdout and "(120,)" in result.stdout
    assert lines[-1].split() == ["total", "(10,)", "61,706", "416,520"]


def test_summary_of_a_bad_spec_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- not a spec\n")
    result = specserve("summary", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip() == f"{bad}:1:1: a spec is a mapping of sections (name, task, input, network, ...), not a list"
