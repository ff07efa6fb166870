"""The uplink contract (firmware_sim/uplink.cddl) as a check the tests share."""

from __future__ import annotations

from importlib import resources

import cbor2
import pycddl

CDDL = resources.files("firmware_sim").joinpath("uplink.cddl").read_text(encoding="utf-8")
SCHEMA = pycddl.Schema(CDDL)
# pycddl 0.6 checks only the first element of an array of arrays, so each series of a
# version-1 payload is also validated on its own against the file's ``series`` rule; and
# inside the whole payload it lets any integer pass for a ``table-exp``, so the series table
# of a version-2 payload is validated on its own against ``series-table``. It also lets
# any non-empty array pass for the choice of two maps ``uplink``: the map is checked here.
SERIES_SCHEMA = pycddl.Schema("tcusim-series = series\n" + CDDL)
TABLE_SCHEMA = pycddl.Schema("tcusim-table = series-table\n" + CDDL)


def conforms(data: bytes) -> bool:
    """Whether ``data`` satisfies uplink.cddl (whole payload and every series)."""
    try:
        SCHEMA.validate_cbor(data)
        doc = cbor2.loads(data)
        if type(doc) is not dict:
            return False
        if doc[0] == 1:
            for series in doc[6]:
                SERIES_SCHEMA.validate_cbor(cbor2.dumps(series))
        elif type(doc[6]) is not list or len(doc[6]) != 9:  # pycddl passes [] for the table
            return False
        else:
            TABLE_SCHEMA.validate_cbor(cbor2.dumps(doc[6]))
    except pycddl.ValidationError:
        return False
    return True
