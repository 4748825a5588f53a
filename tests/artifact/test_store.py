"""The BentoML model store: versions, latest, integrity and consistency checks at load, crash safety."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import bentoml
import onnx
import pytest
import yaml

from models.artifact.card import CARD_KEY
from models.export.parity import check_parity
from models.export.quantize import quantize
from models.artifact.store import StoreError, load_from_store, model_store, save_to_store, verify_stored

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def proven(digits, digits_cnn, digits_export, tmp_path_factory):
    """model.onnx + model.int8.onnx of the digits CNN with their parity and quant reports."""
    pixels, labels = digits
    parity = check_parity(digits_export.path, digits_cnn, pixels[1200:1456], labels=labels[1200:1456])
    int8 = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    quant = quantize(digits_export.path, int8, calibration=pixels[:128], eval_inputs=pixels[1200:],
                     eval_labels=labels[1200:], max_drop=0.05, threads=1, latency_runs=2,
                     require_speedup=False)  # the store test needs an int8 file, fast or not
    files = {"model.onnx": digits_export.path, "model.int8.onnx": int8}
    return files, digits_export.card, parity, quant


def save(proven) -> str:
    files, card, parity, quant = proven
    return save_to_store("digits", files, card, parity, quant)


def rehash(tag: str, fname: str) -> None:
    """Make manifest.json and model.yaml agree with an edited file, as a careful forger would."""
    root = Path(bentoml.models.get(tag, _model_store=model_store()).path)
    digest = __import__("hashlib").sha256((root / fname).read_bytes()).hexdigest()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"][fname]["sha256"] = digest
    (root / "manifest.json").write_text(json.dumps(manifest))
    info = yaml.safe_load((root / "model.yaml").read_text())
    info["metadata"]["sha256"][fname] = digest
    (root / "model.yaml").write_text(yaml.safe_dump(info))


def test_round_trip_versions_and_latest(proven, bentoml_home):
    first, second = save(proven), save(proven)
    assert first != second and first.startswith("digits:") and second.startswith("digits:")
    listed = bentoml.models.list("digits", _model_store=model_store())
    assert sorted(str(m.tag) for m in listed) == sorted([first, second])
    assert all(m.info.labels == {"task": "classification", "spec_hash": "d1g175"} for m in listed)
    assert (bentoml_home / "models" / "digits").is_dir()  # under $BENTOML_HOME, never ~/bentoml

    for ref in ("digits", "digits:latest"):
        assert load_from_store(ref).tag == second
    stored = load_from_store(first)
    files, card, parity, quant = proven
    assert stored.tag == first and stored.card == card
    assert stored.onnx_path.read_bytes() == files["model.onnx"].read_bytes()
    assert stored.int8_path is not None and stored.int8_path.name == "model.int8.onnx"
    assert stored.parity["passed"] and stored.parity["sha256"] == parity.sha256
    assert stored.quant["method"] == quant.method
    metadata = bentoml.models.get(first, _model_store=model_store()).info.metadata
    manifest = json.loads((stored.path / "manifest.json").read_text())
    assert set(manifest["files"]) == set(metadata["sha256"]) == {"model.onnx", "model.int8.onnx", "parity.json", "quant.json"}
    assert metadata["card"]["labels"] == card.labels and metadata["parity"]["passed"]
    # what a service does with a class-level bentoml.models.BentoModel(tag)
    assert verify_stored(bentoml.models.get(first, _model_store=model_store())).card == card


def test_corrupted_file_is_refused(proven):
    tag = save(proven)
    path = Path(load_from_store(tag).onnx_path)
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(StoreError, match=rf"^stored model {tag}: model.onnx sha256 mismatch \(file corrupted after storing\)$"):
        load_from_store(tag)


def test_missing_file_is_refused(proven):
    tag = save(proven)
    Path(load_from_store(tag).int8_path).unlink()
    with pytest.raises(StoreError, match="model.int8.onnx missing"):
        load_from_store(tag)


def test_forged_labels_in_model_yaml_are_refused(proven):
    tag = save(proven)
    root = load_from_store(tag).path
    info = yaml.safe_load((root / "model.yaml").read_text())
    info["metadata"]["card"]["labels"] = ["cat", "dog"]
    (root / "model.yaml").write_text(yaml.safe_dump(info))
    with pytest.raises(StoreError, match=r"card in model.yaml differs from the card inside model.onnx \(fields: labels\)"):
        load_from_store(tag)


def test_forged_labels_inside_the_onnx_file_are_refused(proven):
    tag = save(proven)
    path = load_from_store(tag).onnx_path
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    card = json.loads(props[CARD_KEY])
    card["labels"] = card["labels"][:9]  # one label short of the 10 logits
    onnx.helper.set_model_props(model, {**props, CARD_KEY: json.dumps(card)})
    onnx.save(model, str(path))
    rehash(tag, "model.onnx")
    with pytest.raises(StoreError, match=r"model.onnx: card has 9 labels but output 'logits' \['batch', 10\] has 10 classes"):
        load_from_store(tag)


def test_card_that_is_not_json_is_refused(proven):
    tag = save(proven)
    path = load_from_store(tag).onnx_path
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, CARD_KEY: "{labels: [0"})
    onnx.save(model, str(path))
    rehash(tag, "model.onnx")
    with pytest.raises(StoreError, match=r"model.onnx: card is not valid JSON"):
        load_from_store(tag)


def test_save_refuses_a_proof_of_another_file(proven, tmp_path):
    files, card, parity, quant = proven
    other = tmp_path / "model.onnx"
    model = onnx.load(str(files["model.onnx"]))
    model.doc_string = "changed after the parity check"
    onnx.save(model, str(other))
    with pytest.raises(StoreError, match="parity report is not a passed proof of this model.onnx"):
        save_to_store("digits", {**files, "model.onnx": other}, card, parity, quant)
    with pytest.raises(StoreError, match="no stored model 'digits'"):
        load_from_store("digits")


def test_unknown_tag(proven):
    with pytest.raises(StoreError, match=r"no stored model 'nothing:latest' in .*models"):
        load_from_store("nothing:latest")


def test_exception_during_save_commits_nothing(proven, monkeypatch):
    import models.artifact.store as store

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store.shutil, "copyfile", explode)
    with pytest.raises(OSError, match="disk full"):
        save(proven)
    assert bentoml.models.list(_model_store=model_store()) == []


def test_sigkill_during_commit_leaves_no_half_model(proven, bentoml_home, tmp_path):
    """Kill the saving process while bentoml copies the version into the store: the tag must not exist."""
    files, card, parity, quant = proven
    (tmp_path / "card.json").write_text(card.to_json())
    (tmp_path / "parity.json").write_text(parity.to_json())
    script = textwrap.dedent(f"""
        import json, os, shutil, signal
        from pathlib import Path
        from models.artifact.card import ModelCard
        from models.artifact.store import save_to_store

        class Report:
            def __init__(self, d): self.d = d
            def to_dict(self): return self.d

        copied = []
        real_copyfile = shutil.copyfile
        def copy_then_die(src, dst, **kw):
            if "bentoml-model-" in os.fspath(src):  # bentoml's commit: temp dir -> store
                copied.append(dst)
                if len(copied) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_copyfile(src, dst, **kw)
        shutil.copyfile = copy_then_die
        save_to_store("digits", {{"model.onnx": Path({str(files['model.onnx'])!r})}},
                      ModelCard.from_json(Path({str(tmp_path / 'card.json')!r}).read_text()),
                      Report(json.loads(Path({str(tmp_path / 'parity.json')!r}).read_text())))
    """)
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (bentoml_home / "models" / "digits").exists()  # nothing under the tag
    assert bentoml.models.list(_model_store=model_store()) == []  # and listing still works
    with pytest.raises(StoreError, match="no stored model 'digits'"):
        load_from_store("digits")
    assert load_from_store(save(proven)).card == card  # the next save is unaffected


def test_store_module_imports_no_torch():
    code = "import sys, models.artifact.store, models.artifact.runtime; assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
