"""Print the README's layer reference (markdown) from the layer registry, so the docs cannot drift from the code.

Usage: .venv/bin/python scripts/spec_reference.py > /tmp/layers.md  (then paste between the README markers)
"""
from __future__ import annotations

from pydantic_core import PydanticUndefined

from models.layers.builtin import LAYERS


def _args(model) -> str:
    parts = []
    for name, field in model.model_fields.items():
        if name == "name":
            continue
        if field.default is PydanticUndefined and field.default_factory is None:
            parts.append(f"**{name}**")
        else:
            parts.append(f"{name}={field.default!r}".replace("'", ""))
    return ", ".join(parts) or "—"


def main() -> None:
    print("| layer | arguments (**required**) | input per sample | what it does |")
    print("|---|---|---|---|")
    forms = {1: "(F)", 2: "(C, L) / (T, F)", 3: "(C, H, W)"}
    for name in LAYERS.names():
        entry = LAYERS.get(name)
        ranks = " or ".join(forms[r] for r in entry.ranks) if entry.ranks else ("token ids (T)" if entry.wants_index else "any")
        if entry.wants_index:
            ranks = "token ids (T)"
        doc = " ".join(entry.doc.split()).replace("|", "\\|")  # one table row, whatever the docstring's lines
        print(f"| `{name}` | {_args(entry.args)} | {ranks} | {doc} |")


if __name__ == "__main__":
    main()
