"""Plugins: `--plugin MODULE` on validate and summary, the `specserve.layers` entry point group, the errors a plugin
can cause, and an exported graph that runs without the plugin.

Each check runs the CLI in a subprocess, as a user does: a plugin registers into the process's layer table, and this
test process keeps its table as collected (the registry test parametrizes over it).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tests.conftest import ROOT

PLUGIN = "tests.layers.plugins.gate"
SPEC = """name: plug
task: classification
input: {channels: 3, size: [8, 8]}
network:
  - conv2d: {out: 4, kernel: 3}
  - scaled_tanh: {scale: 0.5}
  - flatten
  - linear: {out: 2}
"""


def specserve(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "models.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


def _spec(tmp_path: Path, text: str = SPEC, name: str = "plug.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_validate_and_summary_with_a_plugin(tmp_path):
    spec = _spec(tmp_path)
    without = specserve("validate", spec)
    assert without.returncode == 1
    assert "network[1].scaled_tanh: unknown layer 'scaled_tanh'" in without.stderr
    assert "A layer from a plugin needs --plugin MODULE" in without.stderr
    ok = specserve("validate", "--plugin", PLUGIN, spec)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"ok {spec}: 406 parameters, output (2,)"
    summary = specserve("summary", "--plugin", PLUGIN, spec)
    assert summary.returncode == 0, summary.stderr
    assert "network[1].scaled_tanh  scaled_tanh  (4, 6, 6)       4" in summary.stdout


def test_the_help_says_a_plugin_is_code_you_run():
    text = " ".join(specserve("validate", "--help").stdout.split())
    assert "A plugin is code you choose to run" in text and "name only modules you trust" in text
    assert "specserve.layers" in text


def test_plugin_errors_are_one_line_naming_the_plugin(tmp_path):
    spec = _spec(tmp_path)
    broken = _spec(tmp_path, SPEC.replace("scaled_tanh: {scale: 0.5}", "broken_layer"), "broken.yaml")
    cases = [
        (["--plugin", "tests.layers.plugins.crash"], 2,
         "error: plugin tests.layers.plugins.crash (--plugin) failed while importing: RuntimeError: this plugin needs a GPU driver"),
        (["--plugin", "tests.layers.plugins.clash"], 2,
         "error: plugin tests.layers.plugins.clash (--plugin) failed while importing: ValueError: layer 'relu' registered twice"),
        (["--plugin", "no_such_plugin.layers"], 2,
         "error: plugin no_such_plugin.layers (--plugin): no module named no_such_plugin"),
        (["--plugin", "not a module"], 2, "error: --plugin takes a module path like my_package.layers"),
    ]
    for args, code, message in cases:
        result = specserve("validate", *args, spec)
        assert result.returncode == code, result.stderr
        assert result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    # a plugin layer whose builder raises: a located spec error (exit 1), naming the plugin
    result = specserve("validate", "--plugin", PLUGIN, broken)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"{broken}:6:5 network[1].broken_layer: KeyError: 'missing' (input (4, 6, 6)) "
                                     f"(layer from {PLUGIN})")


def test_installed_packages_join_through_the_entry_point_group(tmp_path):
    """A distribution declaring `[specserve.layers] gate = tests.layers.plugins.gate` is loaded without --plugin."""
    site = tmp_path / "site"
    info = site / "specserve_gate-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: specserve-gate\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[specserve.layers]\ngate = {PLUGIN}\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    result = specserve("validate", _spec(tmp_path), env=env)
    assert result.returncode == 0, result.stderr
    # a broken entry point names its distribution
    (info / "entry_points.txt").write_text("[specserve.layers]\ngate = tests.layers.plugins.crash\n")
    result = specserve("validate", _spec(tmp_path), env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("error: plugin tests.layers.plugins.crash (entry point gate of specserve-gate)")


def test_an_exported_graph_does_not_need_the_plugin(tmp_path):
    """Build and export a net with a plugin layer in a process that has the plugin; run the ONNX file here, where
    the plugin was never imported: the graph is standard ONNX operators."""
    spec = _spec(tmp_path)
    script = textwrap.dedent(f"""
        import json, numpy as np, torch
        from models.layers.plugins import load_plugins
        load_plugins([{PLUGIN!r}])
        from models.build import build
        from models.spec.load import load_spec
        from tests.layers.test_layer_registry import _export
        net = build(load_spec({spec!r}), seed=0).eval()
        x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(0))
        _export("dynamo", net, x[:2], 1, __import__("pathlib").Path({str(tmp_path / "plug.onnx")!r}))
        with torch.no_grad():
            np.save({str(tmp_path / "x.npy")!r}, x.numpy()); np.save({str(tmp_path / "y.npy")!r}, net(x).numpy())
        print(json.dumps(sorted({{n.op_type for n in __import__("onnx").load({str(tmp_path / "plug.onnx")!r}).graph.node}})))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Tanh" in json.loads(done.stdout.strip().splitlines()[-1])
    assert PLUGIN not in sys.modules
    session = ort.InferenceSession(str(tmp_path / "plug.onnx"), providers=["CPUExecutionProvider"])
    x = np.load(tmp_path / "x.npy")
    (got,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(got, np.load(tmp_path / "y.npy"), rtol=1e-4, atol=1e-5)
