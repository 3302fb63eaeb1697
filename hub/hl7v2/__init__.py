"""HL7 v2: the only package that imports python-hl7 (`hl7`) and `hl7apy`.

`wire` reads what arrives (charset by MSH-18, the MSH, dedup key) and builds ACKs, fast
enough for the MLLP hot path; parsing whole messages and schema-aware validation live
beside it and run after the durable commit.
"""

from hub.hl7v2.wire import (
    ACCEPT,
    ERROR,
    REJECT,
    Decoded,
    Header,
    Hl7Error,
    ack_code,
    ack_wanted,
    build_ack,
    decode,
    parse_header,
)

__all__ = ["ACCEPT", "ERROR", "REJECT", "Decoded", "Header", "Hl7Error", "ack_code",
           "ack_wanted", "build_ack", "decode", "parse_header"]
