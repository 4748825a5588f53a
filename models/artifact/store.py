"""The versioned model store: exported models as BentoML models ("name:version"), verified when loaded.

Each save is a new version created with ``bentoml.models.create`` (labels task/spec_hash, metadata with the
card, file digests and report summaries), so ``bentoml models list`` shows it and ``bentoml build`` can pack
it. Inside the version directory:

    model.onnx          the served graph (card in its metadata_props)
    model.int8.onnx     optional quantized graph (same card)
    model.fp16.onnx     optional fp16 graph for GPUs (same card), with parity.fp16.json, its own proof
    parity.json         the parity proof for model.onnx (its sha256 must match)
    quant.json          optional int8 vs fp32 report
    manifest.json       sha256 and size of every file above

Crash safety: on an exception inside ``bentoml.models.create`` nothing is saved (its temp dir is dropped), but
its commit copies files straight into ``models/<name>/<version>/``, so a SIGKILL during the copy would leave a
half model under the tag (and an empty version dir breaks ``bentoml models list``). The store used here
copies into a staging directory beside the store and publishes the version with one ``os.rename``, so a
version either does not exist or is complete. Loading re-checks everything anyway: manifest, digests, and
the card against the ONNX graph, because the store is files anyone can edit.

This module imports neither torch nor the exporter, so a server can load models without them.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol

import bentoml
import onnx
from bentoml._internal.models import ModelStore  # the store class bentoml.models.* use; subclassed below
from bentoml.exceptions import BentoMLException, NotFound

from models.artifact.card import CardError, ModelCard, read_card, validate_card
from models.errors import SpecserveError

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
FP16_FILE = "model.fp16.onnx"
FP16_PARITY_FILE = "parity.fp16.json"
MANIFEST_FILE = "manifest.json"
PARITY_FILE = "parity.json"
QUANT_FILE = "quant.json"
_RESERVED = {MANIFEST_FILE, PARITY_FILE, QUANT_FILE, FP16_PARITY_FILE, "model.yaml"}
_FORMAT = 1


class StoreError(SpecserveError, RuntimeError):
    """A model cannot be saved or a stored model is incomplete/corrupt/inconsistent; one clear line."""


class Report(Protocol):
    """ParityReport / QuantReport (kept structural so this module needs no torch)."""

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StoredModel:
    """A verified stored model: every file present with its recorded digest, card consistent with the graph."""

    tag: str
    path: Path
    card: ModelCard
    onnx_path: Path
    int8_path: Path | None
    parity: dict[str, Any]
    quant: dict[str, Any] | None
    fp16_path: Path | None = None

    @property
    def quantized_for(self) -> str | None:
        """The CPU level the int8 graph was quantized and timed on (models/artifact/isa.py), if recorded."""
        return (self.quant or {}).get("isa")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _AtomicModelStore(ModelStore):
    """A bentoml ModelStore whose register() writes into a staging dir and publishes it with one rename."""

    @contextlib.contextmanager
    def register(self, tag: str | bentoml.Tag) -> Iterator[str]:
        tag = bentoml.Tag.from_taglike(tag)
        final = self._path / tag.path()
        if final.exists():
            raise StoreError(f"model {tag} already exists in {self._path}")
        staging_root = self._path.parent / ".specserve-staging"  # same filesystem, outside the listed store
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{tag.name}-{tag.version}-", dir=staging_root))
        try:
            yield str(staging)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(staging, final)  # atomic: the version appears complete or not at all
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        latest = self._path / tag.latest_path()
        pending = latest.with_name(f".latest-{os.getpid()}")
        pending.write_text(str(tag.version))
        os.replace(pending, latest)


def model_store() -> ModelStore:
    """The store under $BENTOML_HOME/models, read at call time (bentoml caches the home at first use, which
    would pin tests and tools to whatever was set first); ~/bentoml when BENTOML_HOME is unset."""
    home = Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml")).expanduser()
    (home / "models").mkdir(parents=True, exist_ok=True)
    return _AtomicModelStore(home / "models")


# ----------------------------------------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------------------------------------

def _check_graph_card(what: str, path: Path, card: ModelCard) -> None:
    model = onnx.load(str(path), load_external_data=False)
    try:
        embedded = read_card(model)
        validate_card(embedded, model)
    except CardError as e:
        raise StoreError(f"{what}: {path.name}: {e}") from None
    if embedded != card:
        diff = sorted(k for k in ModelCard.model_fields if getattr(embedded, k) != getattr(card, k))
        raise StoreError(f"{what}: the card given differs from the card inside {path.name} (fields: {', '.join(diff)})")


def _check_files(name: str, files: Mapping[str, Path]) -> dict[str, Path]:
    if ONNX_FILE not in files:
        raise StoreError(f"cannot save {name}: files must include '{ONNX_FILE}', got {sorted(files)}")
    checked = {}
    for fname, src in files.items():
        if fname in _RESERVED or Path(fname).name != fname or fname.startswith("."):
            raise StoreError(f"cannot save {name}: '{fname}' is not a plain file name or is reserved")
        if not Path(src).is_file():
            raise StoreError(f"cannot save {name}: {fname} source {src} does not exist")
        checked[fname] = Path(src)
    return checked


def save_to_store(name: str, files: Mapping[str, str | Path], card: ModelCard, parity_report: Report,
                  quant_report: Report | None = None, fp16_parity_report: Report | None = None) -> str:
    """Store a proven export as a new version of `name`; returns the tag "name:version".

    Refuses (StoreError) unless model.onnx (and model.int8.onnx, if given) carry exactly `card` and agree
    with it, and `parity_report` is a passed proof of this very model.onnx (same sha256).
    """
    sources = _check_files(name, {k: Path(v) for k, v in files.items()})
    for fname in (ONNX_FILE, INT8_FILE, FP16_FILE):
        if fname in sources:
            _check_graph_card(f"cannot save {name}", sources[fname], card)
    parity = parity_report.to_dict()
    if not parity.get("passed") or parity.get("sha256") != _sha256(sources[ONNX_FILE]):
        raise StoreError(f"cannot save {name}: the parity report is not a passed proof of this {ONNX_FILE}")
    fp16_parity = fp16_parity_report.to_dict() if fp16_parity_report is not None else None
    if (fp16_parity is None) != (FP16_FILE not in sources):
        raise StoreError(f"cannot save {name}: {FP16_FILE} and its parity report go together")
    if fp16_parity is not None and (not fp16_parity.get("passed") or
                                    fp16_parity.get("sha256") != _sha256(sources[FP16_FILE])):
        raise StoreError(f"cannot save {name}: the fp16 parity report is not a passed proof of this {FP16_FILE}")
    quant = quant_report.to_dict() if quant_report is not None else None
    if (quant is None) != (INT8_FILE not in sources):
        raise StoreError(f"cannot save {name}: {INT8_FILE} and a quant report go together")

    reports = {PARITY_FILE: json.dumps(parity, indent=2).encode()}
    if fp16_parity is not None:
        reports[FP16_PARITY_FILE] = json.dumps(fp16_parity, indent=2).encode()
    if quant is not None:
        reports[QUANT_FILE] = json.dumps(quant, indent=2).encode()
    digests = {**{f: _sha256(src) for f, src in sources.items()},
               **{f: hashlib.sha256(data).hexdigest() for f, data in reports.items()}}
    # bentoml metadata takes no None values: leave unset card fields out (they default back on load).
    metadata: dict[str, Any] = {
        "format": _FORMAT, "card": card.model_dump(mode="json", exclude_none=True), "sha256": digests,
        "parity": {"passed": True, "exporter": parity.get("exporter"),
                   "max_abs_diff": max(c["max_abs_diff"] for c in parity["checks"])}}
    if quant is not None:
        metadata["quant"] = {k: quant[k] for k in ("method", "metric", "fp32_score", "int8_score", "latency_ms")}
    try:
        with bentoml.models.create(name, labels={"task": card.task, "spec_hash": card.spec_hash},
                                   metadata=metadata, _model_store=model_store()) as bento_model:
            target = Path(bento_model.path)
            for fname, src in sources.items():
                shutil.copyfile(src, target / fname)
            for fname, data in reports.items():
                (target / fname).write_bytes(data)
            manifest = {"format": _FORMAT, "files": {f: {"sha256": digests[f], "bytes": (target / f).stat().st_size}
                                                     for f in digests}}
            (target / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    except (BentoMLException, ValueError) as e:
        raise StoreError(f"cannot save {name}: {e}") from None
    return str(bento_model.tag)


# ----------------------------------------------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------------------------------------------

def _read_json(tag: str, path: Path) -> Any:
    if not path.is_file():
        raise StoreError(f"stored model {tag}: {path.name} missing (incomplete or damaged store entry)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"stored model {tag}: {path.name} is not valid JSON ({e})") from None


def _verify_files(tag: str, root: Path, metadata: Mapping[str, Any]) -> dict[str, str]:
    """Check manifest.json ⇄ model.yaml ⇄ files on disk; return name → sha256 of the verified files."""
    manifest = _read_json(tag, root / MANIFEST_FILE)
    manifest = manifest if isinstance(manifest, dict) else {}
    entries = manifest.get("files")
    if manifest.get("format") != _FORMAT or not isinstance(entries, dict) or ONNX_FILE not in entries:
        raise StoreError(f"stored model {tag}: {MANIFEST_FILE} is not a format-{_FORMAT} manifest listing {ONNX_FILE}")
    recorded = metadata.get("sha256")
    if not isinstance(recorded, dict):
        raise StoreError(f"stored model {tag}: model.yaml metadata has no sha256 table")
    if set(recorded) != set(entries):
        raise StoreError(f"stored model {tag}: {MANIFEST_FILE} lists {sorted(entries)} but model.yaml records "
                         f"{sorted(recorded)}")
    for fname, entry in entries.items():
        want = entry.get("sha256") if isinstance(entry, dict) else None
        if recorded[fname] != want:
            raise StoreError(f"stored model {tag}: {fname} sha256 differs between {MANIFEST_FILE} and model.yaml")
        path = root / fname
        if Path(fname).name != fname or not path.is_file():
            raise StoreError(f"stored model {tag}: {fname} missing (incomplete or damaged store entry)")
        if _sha256(path) != want:
            raise StoreError(f"stored model {tag}: {fname} sha256 mismatch (file corrupted after storing)")
    return dict(recorded)


def _verified_card(tag: str, root: Path, fname: str, metadata: Mapping[str, Any]) -> ModelCard:
    """The card inside `fname`, validated against its graph and equal to the card in model.yaml."""
    model = onnx.load(str(root / fname), load_external_data=False)
    try:
        card = read_card(model)
        validate_card(card, model)
        listed = ModelCard.model_validate(metadata.get("card"))
    except CardError as e:
        raise StoreError(f"stored model {tag}: {fname}: {e}") from None
    except ValueError as e:  # pydantic ValidationError of the model.yaml copy
        raise StoreError(f"stored model {tag}: model.yaml card is invalid: {str(e).splitlines()[0]}") from None
    if listed != card:
        diff = sorted(k for k in ModelCard.model_fields if getattr(listed, k) != getattr(card, k))
        raise StoreError(f"stored model {tag}: card in model.yaml differs from the card inside {fname} "
                         f"(fields: {', '.join(diff)})")
    return card


def load_from_store(tag: str) -> StoredModel:
    """Resolve "name", "name:latest" or "name:version" in $BENTOML_HOME and return it only if it is complete
    and consistent (see verify_stored)."""
    store = model_store()
    try:
        bento_model = bentoml.models.get(tag, _model_store=store)
    except NotFound:
        raise StoreError(f"no stored model '{tag}' in {store._path}") from None
    except BentoMLException as e:
        raise StoreError(f"stored model {tag}: {e}") from None
    return verify_stored(bento_model)


def verify_stored(bento_model: bentoml.Model) -> StoredModel:
    """Check a bentoml model saved by save_to_store: every file present with the digest recorded in both
    manifest.json and model.yaml, the cards in model.onnx / model.int8.onnx valid against their graphs and
    equal to the card in model.yaml, and parity.json a passed proof of this model.onnx.

    Services use this on the model a class-level ``bentoml.models.BentoModel(tag)`` resolves to, since inside
    a built bento the models live in the bento, not in $BENTOML_HOME.
    """
    tag, root = str(bento_model.tag), Path(bento_model.path)
    metadata = bento_model.info.metadata
    digests = _verify_files(tag, root, metadata)
    card = _verified_card(tag, root, ONNX_FILE, metadata)
    int8 = root / INT8_FILE if INT8_FILE in digests else None
    if int8 is not None and _verified_card(tag, root, INT8_FILE, metadata) != card:
        raise StoreError(f"stored model {tag}: {INT8_FILE} carries a different card than {ONNX_FILE}")
    parity = _read_json(tag, root / PARITY_FILE)
    if not isinstance(parity, dict) or not parity.get("passed") or parity.get("sha256") != digests[ONNX_FILE]:
        raise StoreError(f"stored model {tag}: {PARITY_FILE} is not a passed proof of this {ONNX_FILE}")
    quant = _read_json(tag, root / QUANT_FILE) if int8 is not None else None
    fp16 = root / FP16_FILE if FP16_FILE in digests else None
    if fp16 is not None:
        if _verified_card(tag, root, FP16_FILE, metadata) != card:
            raise StoreError(f"stored model {tag}: {FP16_FILE} carries a different card than {ONNX_FILE}")
        proof = _read_json(tag, root / FP16_PARITY_FILE)
        if not isinstance(proof, dict) or not proof.get("passed") or proof.get("sha256") != digests[FP16_FILE]:
            raise StoreError(f"stored model {tag}: {FP16_PARITY_FILE} is not a passed proof of this {FP16_FILE}")
    return StoredModel(tag=tag, path=root, card=card, onnx_path=root / ONNX_FILE, int8_path=int8,
                       parity=parity, quant=quant, fp16_path=fp16)
