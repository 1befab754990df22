"""Certificate authorities the proxy's interception tests share: the sandbox's (our leaves)
and the upstream's (what the proxy verifies against)."""

from __future__ import annotations

import pytest
import trustme


@pytest.fixture(scope="module")
def sandbox_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def upstream_ca() -> trustme.CA:
    return trustme.CA()
