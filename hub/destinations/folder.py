"""Folder destination: each delivered Bundle as a JSON file — the embedded default.

A file is named by its Bundle id, written to a temporary name, fsynced and renamed, so a
reader never sees half a file and a resend after a crash rewrites the same file.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hub import hookimpl
from hub.contracts import DestinationType, RegisterDestination
from hub.domain.model import OutboundDelivery, Outcome


class FolderSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(description="folder for the Bundles; relative to the config file")
    fsync: bool = True


class FolderDestination:
    def __init__(self, name: str, settings: FolderSettings) -> None:
        self.name = name
        self.path = settings.path
        self.fsync = settings.fsync

    async def send(self, delivery: OutboundDelivery) -> Outcome:
        return await asyncio.to_thread(self._write, delivery)

    def _write(self, delivery: OutboundDelivery) -> Outcome:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            target = self.path / f"{delivery.bundle_id}.json"
            tmp = self.path / f".{delivery.bundle_id}.{delivery.id}.tmp"
            with tmp.open("wb") as f:
                f.write(delivery.payload)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, target)
            if self.fsync:
                dir_fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except PermissionError as exc:
            return Outcome.pause(f"cannot write to {self.path}: {exc.strerror}")
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                return Outcome.retry(f"cannot write to {self.path}: {exc.strerror}")
            return Outcome.pause(f"cannot write to {self.path}: {exc.strerror}")
        return Outcome.delivered(f"written to {target.name}")

    async def aclose(self) -> None:
        return None


@hookimpl(trylast=True)
def hub_register_destinations(register: RegisterDestination) -> None:
    register(DestinationType("folder", FolderSettings, FolderDestination))
