"""docs/: the documents the code cites exist, every section it cites is there, and the architecture names every
module of the package."""
from __future__ import annotations

import re

from divscale import paths

DOCS = paths.ROOT / "docs"
CITING = [*(paths.ROOT / "divscale").rglob("*.py"), *(paths.ROOT / "divscale").rglob("*.md"),
          *(paths.ROOT / "recipes").glob("*.yaml"), *(paths.ROOT / "notebooks").glob("*.py"),
          *(paths.ROOT / "tests").glob("*.py"), paths.ROOT / "README.md"]


def _citations(pattern: str) -> set[str]:
    return {m for p in CITING for m in re.findall(pattern, p.read_text(encoding="utf-8"))}


def test_every_cited_document_exists():
    cited = _citations(r"(?<![\w/])docs/([a-z_]+\.md)")
    assert {"paper_spec.md", "architecture.md"} <= cited
    assert not [name for name in cited if not (DOCS / name).is_file()]


def test_every_cited_spec_section_is_in_the_spec():
    spec = (DOCS / "paper_spec.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", spec, flags=re.MULTILINE))
    rows = set(re.findall(r"^\| (\d+) \|", spec.split("## 7.")[1], flags=re.MULTILINE))
    sections = _citations(r"spec §(\d+(?:\.\d+)?)") | _citations(r"§(\d+\.\d+)")
    assert sections and not sorted(s for s in sections if s not in headings), sorted(sections - headings)
    items = _citations(r"§7 (?:#|item )(\d+)")
    assert items and items <= rows and rows == {str(i) for i in range(1, 19)}


def test_the_architecture_names_every_module():
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    package = paths.ROOT / "divscale"
    modules = {p.stem for p in package.rglob("*.py") if p.stem != "__init__"}
    packages = {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    missing = sorted(m for m in modules | {f"{p}/" for p in packages} if m not in text)
    assert not missing, f"docs/architecture.md does not name {missing}"
