"""Docs that cannot drift from the code:
- docs/ARCHITECTURE.md names every module under `services/`, in the section of its package;
- docs/PROTOCOL.md names every decline reason a node sends and every gRPC status the services send;
- no doc names a module path (`services/...py`, `services.x.y`, `experiments/...py`, ...) that does not exist.
Each check is a function run here on the repository, and on a deliberate violation, so that it can fail."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parent.parent
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
PACKAGES = ("protos", "services", "experiments", "benchmarks", "scripts", "tests", "deploy")


def _tree_sections(architecture: str) -> dict[str, str]:
    """The package tree's text (the code block that starts with `protos/`, or the whole text when there is none)
    under each top-level `services/<package>/` line."""
    blocks = [block for block in architecture.split("```")[1::2] if "services/common/" in block]
    sections: dict[str, str] = {}
    current = None
    for line in (blocks[0] if blocks else architecture).splitlines():
        heading = re.match(r"(services/[a-z_]+/)", line)
        if heading:
            current = heading.group(1)
        elif re.match(r"[a-z]", line):
            current = None
        if current:
            sections[current] = sections.get(current, "") + line + "\n"
    return sections


def unnamed_modules(architecture: str, modules: list[str]) -> list[str]:
    """The modules (paths under services/) that the tree does not name in their package's section."""
    sections = _tree_sections(architecture)
    missing = []
    for module in modules:
        package = "/".join(module.split("/")[:2]) + "/"
        if not re.search(rf"\b{re.escape(Path(module).name)}\b", sections.get(package, "")):
            missing.append(module)
    return missing


def _service_modules() -> list[str]:
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "services").rglob("*.py")
                  if p.name not in ("__init__.py", "__main__.py"))


def sent_decline_reasons(sources: list[str]) -> set[str]:
    """Every reason a node declines with: the first argument of each PlanRefusedError and `_decline` call."""
    reasons = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and node.args:
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                index = 1 if name == "_decline" else 0 if name == "PlanRefusedError" else None
                if index is not None and len(node.args) > index and isinstance(node.args[index], ast.Constant):
                    reasons.add(str(node.args[index].value))
    return reasons


def sent_statuses(sources: list[str]) -> set[str]:
    """Every gRPC status a service sends: those its errors map to (`STATUS_OF`), and those
    it aborts or ends a call with directly. (Statuses a client only reads, to retry, are not sent.)"""
    sent = set()
    for source in sources:
        for mapping in re.findall(r"STATUS_OF[^=]*=\s*\{(.*?)\}", source, re.S):
            sent |= set(re.findall(r"StatusCode\.([A-Z_]+)", mapping))
        sent |= set(re.findall(r"(?:abort|set_code)\(\s*grpc\.StatusCode\.([A-Z_]+)", source))
    return sent


def missing_paths(text: str) -> list[str]:
    """Module and file paths a doc names that do not exist in the repository."""
    missing = []
    for path in set(re.findall(rf"\b(?:{'|'.join(PACKAGES)})/[\w/.-]*\.(?:py|proto|sh|yml|md)\b", text)):
        if not (REPO / path).exists():
            missing.append(path)
    for dotted in set(re.findall(r"\b((?:services|experiments|benchmarks|scripts)(?:\.[a-z_0-9]+)+)\b", text)):
        parts = dotted.split(".")
        # The longest prefix that is a module or a package; the rest may be a name defined in it.
        if not any((REPO / Path(*parts[:n])).with_suffix(".py").exists() or (REPO / Path(*parts[:n])).is_dir()
                   for n in range(len(parts), 1, -1)):
            missing.append(dotted)
    return sorted(missing)


def _sources(folder: str) -> list[str]:
    return [p.read_text() for p in sorted((REPO / folder).rglob("*.py"))]


def test_architecture_names_every_module_under_services() -> None:
    assert unnamed_modules((REPO / "docs" / "ARCHITECTURE.md").read_text(), _service_modules()) == []


def test_protocol_names_every_decline_reason_and_status_the_code_sends() -> None:
    protocol = (REPO / "docs" / "PROTOCOL.md").read_text()
    sources = _sources("services")
    reasons = sent_decline_reasons(sources)
    assert {"plaintext_refused", "evaluation_withheld", "training_not_finite"} <= reasons  # the scan finds them
    assert sorted(r for r in reasons if f"`{r}`" not in protocol) == []
    mapped = re.search(r"STATUS_OF[^=]*=\s*\{(.*?)\}", (REPO / "services/common/runtime/grpc_status.py").read_text(),
                       re.S)
    assert mapped is not None
    errors = set(re.findall(r"errors\.([A-Za-z]+Error)", mapped.group(1)))
    assert len(errors) > 15 and sorted(e for e in errors if f"`{e}`" not in protocol) == []
    statuses = sent_statuses(sources)
    assert {"RESOURCE_EXHAUSTED", "PERMISSION_DENIED"} <= statuses
    assert sorted(s for s in statuses if s not in protocol) == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_doc_names_a_path_that_does_not_exist(doc: Path) -> None:
    assert missing_paths(doc.read_text()) == []


def test_each_check_fails_on_a_deliberate_violation() -> None:
    tree = "services/common/\n    errors.py\nservices/aggregator/\n    round_loop.py\n"
    assert unnamed_modules(tree, ["services/aggregator/round_loop.py", "services/aggregator/errors.py"]) == [
        "services/aggregator/errors.py"]  # named, but in another package's section
    assert sent_decline_reasons(['raise PlanRefusedError("made_up", "x")', 'self._decline(p, "other", "d")']) == {
        "made_up", "other"}
    assert sent_statuses(["context.abort(grpc.StatusCode.DATA_LOSS, 'x')", "RETRY = {grpc.StatusCode.UNAVAILABLE}"]
                         ) == {"DATA_LOSS"}
    assert missing_paths("see services/common/nowhere.py and scripts.gone.module, not services/common/errors.py"
                         ) == ["scripts.gone.module", "services/common/nowhere.py"]
