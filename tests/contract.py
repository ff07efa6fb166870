"""The uplink contract (firmware_sim/uplink.cddl) as a check the tests share."""

from __future__ import annotations

from importlib import resources

import cbor2
import pycddl

CDDL = resources.files("firmware_sim").joinpath("uplink.cddl").read_text(encoding="utf-8")
SCHEMA = pycddl.Schema(CDDL)
# pycddl 0.6 checks only the first element of an array of arrays, so each series is also
# validated on its own against the file's ``series`` rule.
SERIES_SCHEMA = pycddl.Schema("tcusim-series = series\n" + CDDL)


def conforms(data: bytes) -> bool:
    """Whether ``data`` satisfies uplink.cddl (whole payload and every series)."""
    try:
        SCHEMA.validate_cbor(data)
        doc = cbor2.loads(data)
        for series in doc[6]:
            SERIES_SCHEMA.validate_cbor(cbor2.dumps(series))
    except pycddl.ValidationError:
        return False
    return True
