"""Vendor JSON: each way a body can be wrong gets its own clear error."""

import pytest

from hub.errors import InputError
from hub.jsonsafe import loads_strict


@pytest.mark.parametrize(("body", "message"), [
    (b'{"a": 1,}', "invalid JSON at line 1 column 9"),
    (b'{"a": 1, "a": 2}', "duplicate key 'a'"),
    (b'{"a": NaN}', "NaN is not valid JSON"),
    (b'{"a": -Infinity}', "-Infinity is not valid JSON"),
    (b'{"a": 1e1000000}', "out of range"),
    (b'{"a": ' + b"9" * 5000 + b"}", "invalid JSON number"),
    (b"[" * 100 + b"]" * 100, "nested deeper than 64"),
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
    (b'{"a": "\xff"}', "not UTF-8 (byte 7)"),
    (b"", "invalid JSON at line 1 column 1"),
])
def test_rejections(body, message):
    with pytest.raises(InputError) as info:
        loads_strict(body)
    assert info.value.status == 400
    assert message in info.value.detail


def test_accepts_ordinary_json_with_bom_and_norwegian_text():
    assert loads_strict('\ufeff{"note": "Øystein på «rom 3»"}'.encode()) == \
        {"note": "Øystein på «rom 3»"}
