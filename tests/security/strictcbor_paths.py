"""A fixture that runs a test once per way security/strictcbor.py decodes: with cbor2's
decoder options (cbor2 >= 6, amd64 and arm64 packages) and by walking the heads first
(cbor2 5, the armhf package). Import it into a test module to run that module twice."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from security import strictcbor

OPTIONS_HERE = strictcbor._options_work()


@pytest.fixture(params=["options", "walk"])
def strict_cbor_path(request: pytest.FixtureRequest) -> Iterator[str]:
    """``options``: cbor2's own strict decoder options (skipped where this cbor2 has none);
    ``walk``: check_item, then plain cbor2.loads."""
    if request.param == "options" and not OPTIONS_HERE:
        pytest.skip("this cbor2 has no strict decoder options (cbor2 < 6)")
    saved = strictcbor.USE_DECODER_OPTIONS
    strictcbor.USE_DECODER_OPTIONS = request.param == "options"
    try:
        yield request.param
    finally:
        strictcbor.USE_DECODER_OPTIONS = saved
