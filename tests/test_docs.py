"""The README and the docs against the repository (issue 13): every relative link
resolves (file and heading), every test file the README's feature table names
exists and holds tests, and the version lives in one place (the package's
``__version__``, which the distribution's metadata and the changelog repeat).

ci/install-test.sh copies README.md, CHANGELOG.md, LICENSE, docs/ and
benchmarks/README.md beside tests/, so these run against the installed package
too.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

import fastproxy

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CHANGELOG = ROOT / "CHANGELOG.md"
DOCS = [README, CHANGELOG, ROOT / "benchmarks" / "README.md",
        *sorted((ROOT / "docs").glob("*.md"))]

_FENCE_RE = re.compile(r"^```.*?^```", re.M | re.S)
_CODE_RE = re.compile(r"`[^`\n]*`")
_LINK_RE = re.compile(r"\]\(([^)\s]+)\)")
_HEADING_RE = re.compile(r"^#{1,6} (.*?)\s*$", re.M)


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown text's headings, as GitHub makes them: lower case,
    punctuation other than `-` and `_` dropped, spaces made `-`, repeats numbered."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in _HEADING_RE.findall(_FENCE_RE.sub("", text)):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def broken_links(doc: Path, text: str) -> list[str]:
    """The relative links of TEXT (the content of DOC) whose file or heading is not
    there; links inside code are not links."""
    broken = []
    body = _CODE_RE.sub("", _FENCE_RE.sub("", text))
    for target in _LINK_RE.findall(body):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
            continue
        path, _, anchor = target.partition("#")
        where = (doc.parent / path) if path else doc
        if not where.exists():
            broken.append(f"{target}: no such file")
            continue
        if not anchor or where.suffix != ".md":
            continue
        if anchor not in anchors(where.read_text(encoding="utf-8") if path else text):
            broken.append(f"{target}: no such heading in {where.name}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    assert broken_links(doc, doc.read_text(encoding="utf-8")) == []


def test_the_link_check_sees_a_missing_file_or_heading() -> None:
    text = ("# Top\n## TCP passthrough (`mode = \"tcp\"`)\n## Top\n"
            "[a](#tcp-passthrough-mode--tcp) [b](#top-1) [c](docs/operations.md#running)"
            " [d](https://example.com/x) `[e](nowhere.md)`\n"
            "[f](#nothing) [g](docs/absent.md) [h](docs/operations.md#absent)\n")
    assert broken_links(README, text) == [
        "#nothing: no such heading in README.md",
        "docs/absent.md: no such file",
        "docs/operations.md#absent: no such heading in operations.md",
    ]


def feature_rows() -> list[tuple[str, list[str]]]:
    """(feature, test files named in its "tested in" cell) of the README's table."""
    lines = README.read_text(encoding="utf-8").splitlines()
    header = next(i for i, line in enumerate(lines)
                  if line.startswith("| | fastproxy | tested in |"))
    rows = []
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows.append((cells[0], re.findall(r"`([^`]+)`", cells[2])))
    return rows


def test_the_feature_table_names_test_files_that_hold_tests() -> None:
    rows = feature_rows()
    assert len(rows) >= 20
    named = 0
    for feature, files in rows:
        for name in files:
            path = ROOT / "tests" / name
            assert path.is_file(), f"{feature}: {name} is not in tests/"
            assert re.search(r"^(async )?def test_", path.read_text(encoding="utf-8"),
                             re.M), f"{feature}: {name} holds no test"
            named += 1
    assert named >= 30
    # A "yes" in fastproxy's column names where it is tested.
    for line in README.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 7 and cells[1].startswith("yes"):
            assert "`test_" in cells[2], f"{cells[0]}: no test named"


def test_the_version_lives_in_one_place() -> None:
    # The build reads it from fastproxy/__init__.py (pyproject: dynamic, attr), so
    # the installed distribution says the same; the changelog's newest entry is it.
    assert re.fullmatch(r"\d+\.\d+\.\d+", fastproxy.__version__)
    assert importlib.metadata.version("fastproxy") == fastproxy.__version__
    first = re.search(r"^## (\S+)", CHANGELOG.read_text(encoding="utf-8"), re.M)
    assert first is not None and first.group(1) == fastproxy.__version__
    # No module of the package spells the version itself.
    package = Path(fastproxy.__file__).parent
    spelled = [p.name for p in package.glob("*.py")
               if f'"{fastproxy.__version__}"' in p.read_text(encoding="utf-8")]
    assert spelled == ["__init__.py"]


def test_the_license_is_shipped() -> None:
    assert importlib.metadata.metadata("fastproxy")["License-Expression"] == "MIT"
    files = importlib.metadata.files("fastproxy") or []
    [license_file] = [f for f in files if f.name == "LICENSE"]
    text = Path(str(license_file.locate())).read_text(encoding="utf-8")
    assert text.startswith("MIT License")
    assert text == (ROOT / "LICENSE").read_text(encoding="utf-8")
