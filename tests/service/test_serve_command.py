"""`specserve serve` as a user runs it: a spec of one's own goes through `specserve run` into a fresh store and is
served by name on its task's endpoint; with no config at all every stored model is served by its task; a model
missing from the store stops start-up with one line naming the store and the command that makes it (from
`specserve serve` and from a plain `bentoml serve` alike), never BentoML's attempt to download it.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import yaml

from live_server import ROOT, free_port, stop_group, wait_ready

pytestmark = pytest.mark.slow

OWN_SPEC = """
name: my-regressor
task: regression
input: {features: 2}
network:
  - linear: {out: 1}
init: {normal: {std: 0.01}}
data: {dataset: linear_synthetic, batch_size: 10}
train: {epochs: 3, optimizer: {sgd: {lr: 0.03}}}
"""


def specserve(*args: str, home: Path, env: dict[str, str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "SPECSERVE_CONFIG"}
    return subprocess.run([sys.executable, "-m", "models.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True",
                                                **(env or {})})


@contextlib.contextmanager
def serving(*args: str, home: Path, log: Path, timeout: float = 180) -> Iterator[str]:
    """`specserve serve ARGS --port <free>` until /readyz answers; its process group is stopped on exit."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k != "SPECSERVE_CONFIG"}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "models.cli", "serve", *args, "--port", str(port)], cwd=ROOT,
                                   env={**environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"},
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(process, url, log, timeout, "specserve serve")
        yield url
    finally:
        stop_group(process)


def served(url: str) -> dict[str, list[str]]:
    endpoints = httpx.post(f"{url}/models", json={}, timeout=30).json()["endpoints"]
    return {name: [m["name"] for m in e["models"]] for name, e in endpoints.items()}


def test_a_spec_of_ones_own_is_run_then_served_by_name(tmp_path: Path) -> None:
    home, spec = tmp_path / "bentoml", tmp_path / "my_regressor.yaml"
    spec.write_text(OWN_SPEC)
    made = specserve("run", str(spec), "--runs", str(tmp_path / "runs"), "--quiet", "--device", "cpu", home=home)
    assert made.returncode == 0, made.stderr[-3000:]
    written = tmp_path / "serving.yaml"
    with serving("my-regressor", "--write", str(written), home=home, log=tmp_path / "serve.log") as url:
        assert served(url) == {"predict": ["my-regressor"]}
        answer = httpx.post(f"{url}/predict", json={"features": [[1.0, 1.0], [0.0, 0.0]]}, timeout=30)
        assert answer.status_code == 200 and answer.json()["model"].startswith("my-regressor:")
        outputs = answer.json()["outputs"]
        assert abs(outputs[0][0] - 2.8) < 0.2 and abs(outputs[1][0] - 4.2) < 0.2  # y = 2·x1 − 3.4·x2 + 4.2
        assert httpx.get(f"{url}/v2/models/my-regressor", timeout=30).json()["inputs"][0]["shape"] == [-1, 2]
    config = yaml.safe_load(written.read_text())
    assert config["endpoints"] == {"predict": {"models": ["my-regressor"]}}
    assert config["workers"] == 2  # the rest: the shipped service/serving.yaml's settings


def test_with_no_config_every_stored_model_is_served_by_its_task(stored: tuple[Path, dict[str, str]],
                                                                  tmp_path: Path) -> None:
    home, tags = stored
    with serving("--write", str(tmp_path / "serving.yaml"), home=home, log=tmp_path / "serve.log") as url:
        assert served(url) == {"classify": ["test-digits", "test-digits-mlp"], "segment": ["test-shapes"],
                               "generate": ["test-chars"], "forecast": ["sine-forecaster"],
                               "predict": ["linear-regression"], "classify_text": ["test-text"]}
        answer = httpx.post(f"{url}/generate", json={"prefix": "the ", "length": 5}, timeout=30)
        assert answer.status_code == 200 and answer.json()["model"] == tags["test-chars"]


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def test_a_model_missing_from_the_store_stops_start_up_with_one_line(stored: tuple[Path, dict[str, str]],
                                                                     tmp_path: Path) -> None:
    home, _ = stored
    store = home / "models"
    nope = specserve("serve", "test-digits", "nope", "--port", str(free_port()), home=home, timeout=120)
    assert nope.returncode == 2
    assert one_line(nope.stderr) == (f"error: model nope is not in the model store {store}; make it with "
                                     f"`specserve run <a spec with name: nope>`")
    with_spec = specserve("serve", "digits-cnn", home=home, timeout=120)
    assert f"{store}; make it with `specserve run specs/digits_cnn.yaml`" in one_line(with_spec.stderr)
    config = tmp_path / "serving.yaml"
    config.write_text(yaml.safe_dump({"endpoints": {"classify": {"models": ["test-digits", "digits-cnn"]}}}))
    from_config = specserve("serve", "--config", str(config), home=home, timeout=120)
    assert from_config.returncode == 2 and "digits-cnn is not in the model store" in one_line(from_config.stderr)
    # a plain `bentoml serve` of that config: one line too, instead of "No cloud context default found"
    bentoml = subprocess.run([str(Path(sys.executable).with_name("bentoml")), "serve", "service.service:SpecServe",
                              "--port", str(free_port())], cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "BENTOML_HOME": str(home), "SPECSERVE_CONFIG": str(config),
                                  "BENTOML_DO_NOT_TRACK": "True"})
    assert bentoml.returncode != 0
    line = one_line(bentoml.stdout + bentoml.stderr)
    assert "classify: model digits-cnn" in line and f"is not in the model store {store}" in line
    assert "specserve run specs/digits_cnn.yaml" in line and "cloud" not in line
