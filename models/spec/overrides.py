"""Command-line overrides merged into the Spec, so there is one config object: what the loop runs, what the
schedule counts and what the run saves as spec.yaml are the same numbers."""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from models.errors import SpecserveError
from models.spec.schema import Spec


class OverrideError(SpecserveError):
    """A command-line override has a value its spec field refuses; the message names the flag."""


def with_train_overrides(spec: Spec, changes: dict[str, Any]) -> Spec:
    """`spec` with these `train` fields replaced (None values are left alone), validated like the YAML would be."""
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return spec
    try:
        return spec.with_train(**changes)
    except ValidationError as err:
        first = err.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise OverrideError(f"{flag} {first.get('input')!r}: {first['msg']} (train.{first['loc'][0]} of {spec.name})") from None
