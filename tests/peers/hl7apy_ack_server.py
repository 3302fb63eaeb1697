"""hl7apy's MLLPServer as an MLLP ACK server (peers.md C1): run as a subprocess.

``python tests/peers/hl7apy_ack_server.py PORT`` — AA if hl7apy parses the message for its
declared version, AE with hl7apy's reason otherwise. Like every hl7apy MLLPServer it
closes the connection after each message (crs4/hl7apy#37), and it is threaded
(socketserver), not asyncio. Used by the mllp destination tests and the benchmark.
"""

from __future__ import annotations

import sys
import time

from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message, parse_segment

VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1",
            "2.8.2")


class AckHandler(AbstractHandler):  # type: ignore[misc]
    def reply(self) -> str:
        raw = self.incoming_message
        msh = parse_segment(raw.split("\r", 1)[0])
        version = msh.msh_12.value or "2.5"
        code, text = "AA", ""
        try:
            parse_message(raw, find_groups=False)
        except Exception as exc:  # hl7apy's reason goes into MSA-3
            code, text = "AE", str(exc)[:80]
        ack = Message("ACK", version=version if version in VERSIONS else "2.5")
        ack.msh.msh_3 = "PEER"
        ack.msh.msh_5 = msh.msh_3.value
        ack.msh.msh_9 = "ACK^" + (msh.msh_9.msh_9_2.value or "") + "^ACK"
        ack.msh.msh_10 = f"ACK{int(time.time() * 1000)}"
        ack.msa.msa_1 = code
        ack.msa.msa_2 = msh.msh_10.value
        if text:
            ack.msa.msa_3 = text.replace("|", " ").replace("^", " ")
        return str(ack.to_mllp())


class AnyType(dict[str, tuple[type[AckHandler]]]):  # handlers are keyed by the full MSH-9 string
    def __missing__(self, key: str) -> tuple[type[AckHandler]]:
        return (AckHandler,)


if __name__ == "__main__":
    server = MLLPServer("127.0.0.1", int(sys.argv[1]), AnyType(), timeout=10)
    print("ready", flush=True)
    server.serve_forever()
