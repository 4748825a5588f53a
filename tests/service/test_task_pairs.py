"""Every (task, input kind) pair of models/task_table.py, trained → exported → stored → served, by a server that
cannot import torch.

The server's processes get a `sitecustomize` that sets sys.modules["torch"] = None, so any `import torch` on the
serving side fails at start-up: the Bento needs no torch (bentofile.yaml lists none). One request per pair goes to
the endpoint the table names, with a real input of the pair's kind, and the answer is checked for sense.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

from live_server import ROOT, Server, serve
from models.task_table import TASK_KINDS, task_kind

PAIR_MODELS = {"classify": "test-digits", "segment": "test-shapes", "generate": "test-chars",
               "forecast": "sine-forecaster", "predict": "linear-regression", "classify_text": "test-text"}
BLOCK_TORCH = 'import sys\nsys.modules["torch"] = None  # the serving side must never import torch\n'


def _config() -> dict:
    return {"endpoints": {endpoint: {"models": [name]} for endpoint, name in PAIR_MODELS.items()},
            "workers": 1, "threads": 1}


@pytest.fixture(scope="module")
def torch_free_server(stored: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home, tags = stored
    blocker = tmp_path_factory.mktemp("no-torch")
    (blocker / "sitecustomize.py").write_text(BLOCK_TORCH)
    with serve(home, tags, tmp_path_factory.mktemp("server"), overrides=_config(), python_path=(blocker,)) as running:
        yield running


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _classify(http: httpx.Client) -> None:
    one = np.zeros((8, 8), dtype=np.uint8)
    one[1:7, 3:5] = 255  # a vertical bar
    answer = http.post("/classify", files={"images": ("one.png", _png(one), "image/png")}, data={"k": "3"})
    assert answer.status_code == 200, answer.text
    top = answer.json()["results"][0]["top"]
    assert len(top) == 3 and abs(sum(t["probability"] for t in top)) <= 1.0 + 1e-6


def _segment(http: httpx.Client) -> None:
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[16:48, 16:48] = 255  # a square
    answer = http.post("/segment", files={"image": ("s.png", _png(image), "image/png")})
    assert answer.status_code == 200, answer.text
    assert abs(sum(answer.json()["shares"].values()) - 1.0) < 1e-6


def _generate(http: httpx.Client) -> None:
    answer = http.post("/generate", json={"prefix": "the time", "length": 20, "temperature": 0, "seed": 1})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["text"]) == 20


def _forecast(http: httpx.Client) -> None:
    t = np.arange(40) * 0.1
    answer = http.post("/forecast", json={"values": np.sin(t).tolist(), "k": 3})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["forecast"]) == 3 and all(abs(v) < 2 for v in answer.json()["forecast"])


def _predict(http: httpx.Client) -> None:
    # specs/linear_regression.yaml learns y = 2·x1 − 3.4·x2 + 4.2 (D2L 3.3)
    answer = http.post("/predict", json={"features": [[1.0, 1.0], [0.0, 0.0]]})
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    assert np.allclose(outputs, [[2.8], [4.2]], atol=0.1), outputs
    wrong = http.post("/predict", json={"features": [[1.0, 1.0, 1.0]]})
    assert wrong.status_code == 422 and "takes 2" in wrong.json()["error"]


def _classify_text(http: httpx.Client) -> None:
    answer = http.post("/classify_text", json={"texts": ["the phone is great, would buy again", "awful lamp"], "k": 2})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["top"][0]["label"] for r in results] == ["positive", "negative"]
    assert all(len(r["top"]) == 2 for r in results)


REQUESTS: dict[str, Callable[[httpx.Client], None]] = {
    "classify": _classify, "segment": _segment, "generate": _generate, "forecast": _forecast, "predict": _predict,
    "classify_text": _classify_text}


def test_every_pair_has_a_request_here() -> None:
    """A row added to the table without an end-to-end request here fails this test."""
    assert {k.endpoint for k in TASK_KINDS} == set(REQUESTS) == set(PAIR_MODELS)


@pytest.mark.parametrize("pair", TASK_KINDS, ids=[f"{k.task}-{k.input}" for k in TASK_KINDS])
def test_each_pair_is_served_without_torch(pair, torch_free_server: Server) -> None:
    with httpx.Client(base_url=torch_free_server.url, timeout=60) as http:
        REQUESTS[pair.endpoint](http)
        described = http.post("/models", json={}).json()["endpoints"][pair.endpoint]["models"][0]
    assert task_kind(described["task"], described["input"]["kind"]) == pair


def test_service_module_imports_and_answers_without_torch(stored: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """In one process: torch blocked, `import service.service`, build the service object and answer a forecast."""
    home, _ = stored
    config = tmp_path / "serving.yaml"
    config.write_text(json.dumps(_config()))  # JSON is YAML
    code = BLOCK_TORCH + (
        "import service.service as s\n"
        "api = s.SpecServe.inner()\n"
        "out = api.forecast(values=[0.0, 0.1, 0.2, 0.3, 0.4], k=2)\n"
        "assert len(out.forecast) == 2, out\n"
        "assert 'torch' not in {m.split('.')[0] for m, v in sys.modules.items() if v is not None}\n"
        "print('served', out.model)\n")
    env = {**os.environ, "BENTOML_HOME": str(home), "SPECSERVE_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "served sine-forecaster:" in result.stdout, result.stderr[-3000:]
