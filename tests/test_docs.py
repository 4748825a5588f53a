"""The README's reference is generated from the registries: it must match the code."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_layer_table_is_current():
    generated = subprocess.run([sys.executable, "scripts/spec_reference.py"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- layers:begin[^>]*-->\n(.*?)<!-- layers:end -->", readme, re.S)
    assert block, "README lost its layer-table markers"
    assert block.group(1) == generated, "README layer table is stale: run scripts/spec_reference.py and paste it"
