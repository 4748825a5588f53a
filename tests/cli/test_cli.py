"""The command line as a user runs it: a real subprocess, exit codes, one line per error."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, SPECS
from tests.train.test_train import TINY_DIGITS


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


# ------------------------------------------------------------------ one config object: overrides live in the spec
def _history(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())["history"]


def test_epochs_override_is_the_runs_spec(shared_data, tmp_path):
    """`specserve train specs/lenet.yaml --epochs 2`: the run's spec.yaml says 2 epochs and 2 epochs ran."""
    run = tmp_path / "run"
    result = specserve("train", "specs/lenet.yaml", "--epochs", "2", "--max-steps", "3", "--quiet", "--out", str(run),
                       "--data-root", str(shared_data))
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((run / "spec.yaml").read_text())["train"]["epochs"] == 2
    assert [h["epoch"] for h in _history(run)] == [1, 2]
    assert json.loads((run / "metrics.json").read_text())["complete"] is True


def test_cosine_schedule_ends_at_the_overridden_epoch(tmp_path):
    """The schedule counts the overridden epochs: a cosine to min_lr reaches it at the end of epoch 2, not of 10."""
    spec = tmp_path / "cosine.yaml"
    spec.write_text(TINY_DIGITS.replace("EPOCHS", "10").replace(", seed: 3}", ", seed: 3, schedule: {cosine: {min_lr: 0.001}}}"))
    run = tmp_path / "run"
    result = specserve("train", str(spec), "--epochs", "2", "--max-steps", "4", "--quiet", "--out", str(run))
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((run / "spec.yaml").read_text())["train"]["epochs"] == 2
    history = _history(run)
    assert len(history) == 2 and history[-1]["lr"] == pytest.approx(0.001)  # the cosine's end
    assert history[0]["lr"] > 0.01  # half-way down from 0.05, not already at the end


def test_a_bad_override_names_the_flag(tmp_path):
    result = specserve("train", "specs/digits_cnn.yaml", "--epochs", "0", "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: --epochs 0:") and "Traceback" not in result.stderr


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, monkeypatch):
    """Every SpecserveError is one line (exit 2); any other exception is a bug and is not hidden."""
    from models.cli import main as cli
    from models.cli.commands import COMMANDS
    from models.errors import SpecserveError

    class Broken(SpecserveError):
        pass

    help_text, add, _ = COMMANDS["summary"]
    monkeypatch.setitem(COMMANDS, "summary", (help_text, add, lambda args: (_ for _ in ()).throw(Broken("bad run"))))
    assert cli.main(["summary", "x.yaml"]) == 2
    monkeypatch.setitem(COMMANDS, "summary", (help_text, add, lambda args: 1 / 0))
    with pytest.raises(ZeroDivisionError):
        cli.main(["summary", "x.yaml"])


def test_a_spec_built_without_the_loader_says_so():
    from models.spec.schema import NotLoaded, Spec

    spec = Spec.model_validate({"name": "t", "task": "regression", "input": {"features": 2},
                                "network": [{"linear": {"out": 1}}]})
    with pytest.raises(NotLoaded, match="not by models.spec.load"):
        spec.nodes
