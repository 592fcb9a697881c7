"""docs/design.md is in the repository, and every `docs/design.md §n` cited in the code names one of its sections."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"docs/design\.md §(\d+)(?:[–-](\d+))?")


def _sections() -> set[int]:
    text = (ROOT / "docs" / "design.md").read_text()
    return {int(m) for m in re.findall(r"^## (\d+)\. ", text, flags=re.M)}


def test_design_doc_has_numbered_sections():
    assert _sections() == set(range(1, 11))


def test_every_citation_names_a_section():
    sections = _sections()
    bad = []
    for folder in ("segcompass", "sae", "analysis", "tests", "bench", "notebooks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".ipynb", ".md") or not path.is_file():
                continue
            for m in CITED.finditer(path.read_text(encoding="utf-8")):
                cited = {int(m.group(1))} | ({int(m.group(2))} if m.group(2) else set())
                if not cited <= sections:
                    bad.append(f"{path.relative_to(ROOT)}: {m.group(0)}")
    assert not bad, bad
