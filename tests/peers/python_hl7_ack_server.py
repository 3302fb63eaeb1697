"""python-hl7's asyncio MLLP server as an ACK server (stack.md §2.3): run as a subprocess.

``python tests/peers/python_hl7_ack_server.py PORT`` — parses every message with
`hl7.parse` (via `reader.readmessage()`) and answers `create_ack("AA")`, on persistent
connections. Decodes as ISO-8859-1 so Norwegian letters do not kill the connection (its
default is ASCII, python-hl7#54). Stores nothing. Used by the MLLP benchmark.
"""

from __future__ import annotations

import asyncio
import sys
import warnings

import hl7
from hl7.mllp import start_hl7_server

warnings.simplefilter("ignore", DeprecationWarning)  # create_ack uses datetime.utcnow()


async def handle(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
    try:
        while not writer.is_closing():
            message = await reader.readmessage()
            writer.writemessage(message.create_ack("AA"))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    async with await start_hl7_server(handle, "127.0.0.1", port, encoding="iso-8859-1",
                                      limit=1 << 20) as server:
        print("ready", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
