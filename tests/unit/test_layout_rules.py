"""ARCHITECTURE §4 rules, enforced: one module owns each outside library, the domain is
pure, and the core never imports a vendor."""

import ast
import sys
from pathlib import Path

HUB = Path(__file__).resolve().parents[2] / "hub"


def imports_of(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def modules():
    for path in HUB.rglob("*.py"):
        yield path.relative_to(HUB.parent).as_posix(), set(imports_of(path))


def test_only_hub_fhir_imports_fhir_resources():
    offenders = [p for p, imps in modules()
                 if any(i.startswith("fhir.resources") or i.startswith("fhir_core") for i in imps)
                 and not p.startswith("hub/fhir/")]
    assert offenders == []


def test_only_the_http_client_module_imports_httpx():
    offenders = [p for p, imps in modules()
                 if any(i == "httpx" or i.startswith("httpx.") for i in imps)
                 and p != "hub/httpclient.py"]
    assert offenders == []


def test_only_hub_hl7v2_imports_the_hl7_libraries():
    offenders = [p for p, imps in modules()
                 if any(i.split(".")[0] in ("hl7", "hl7apy") for i in imps)
                 and not p.startswith("hub/hl7v2/")]
    assert offenders == []


def test_only_the_messaging_xml_module_parses_xml():
    """lxml is GP messaging's, in one module; the standard library's XML parsers are not
    hardened, so only hub.replay may use xml.etree, and only to write JUnit reports."""
    offenders = [p for p, imps in modules()
                 if any(i.split(".")[0] in ("lxml", "defusedxml") or
                        (i.split(".")[0] == "xml" and p != "hub/replay.py") for i in imps)
                 and p != "hub/messaging/xml.py"]
    assert offenders == []


def test_core_never_imports_a_vendor_plugin():
    offenders = [p for p, imps in modules()
                 if any(i.startswith(("tryggbro_", "plugins")) for i in imps)]
    assert offenders == []


def test_domain_imports_only_the_standard_library_and_itself():
    stdlib = set(sys.stdlib_module_names)
    for path, imps in modules():
        if path.startswith("hub/domain/"):
            foreign = {i for i in imps
                       if i.split(".")[0] not in stdlib and not i.startswith("hub.domain")
                       and i != "__future__"}
            assert foreign == set(), (path, foreign)
