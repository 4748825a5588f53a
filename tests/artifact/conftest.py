"""The artifact tests need exported models: the export tests' fixtures (one set, defined in tests/export/conftest.py)."""
from tests.export.conftest import (  # noqa: F401  (pytest finds fixtures by name in this module)
    bentoml_home, digits, digits_card, digits_cnn, digits_export, one_torch_thread, series, standins, text_tokens,
)
