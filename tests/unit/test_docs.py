"""Documentation that cannot drift: every configuration key is in docs/configuration.md."""

from pathlib import Path

from pydantic import BaseModel

from hub.auth.settings import BearerAuth, HelseIdAuth, SmartAuth
from hub.config import Config
from hub.destinations.edi import Edi2Settings
from hub.destinations.fhir_rest import FhirRestSettings
from hub.destinations.folder import FolderSettings
from hub.destinations.jft import JftSettings
from hub.destinations.mllp import MllpDestinationSettings
from hub.destinations.pmd import PmdSettings
from hub.destinations.vkp import VkpSettings
from hub.sources.edi_inbox import Edi2InboxSettings
from hub.sources.http import HttpSourceSettings
from hub.sources.mllp import MllpSourceSettings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def fields(model: type[BaseModel]):
    """(name, model) for every field, nested models included."""
    for name, field in model.model_fields.items():
        yield name, field
        annotation = field.annotation
        for candidate in (*getattr(annotation, "__args__", ()), annotation):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                yield from fields(candidate)


def test_every_configuration_key_is_documented():
    text = (DOCS / "configuration.md").read_text()
    sections = [name for name in Config.model_fields if name != "path"]
    missing = [s for s in sections if f"[{s}" not in text and f"[[{s}]]" not in text]
    top = set(Config.model_fields)
    for model in (Config, HttpSourceSettings, FhirRestSettings, FolderSettings, Edi2Settings,
                  Edi2InboxSettings, MllpSourceSettings, MllpDestinationSettings,
                  HelseIdAuth, SmartAuth, BearerAuth, VkpSettings, JftSettings, PmdSettings):
        for name, _ in fields(model):
            if model is Config and name in top:
                continue  # a section, checked above (path is set by the loader)
            if f"`{name}`" not in text:
                missing.append(f"{model.__name__}.{name}")
    assert missing == []
