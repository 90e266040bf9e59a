"""docs/configuration.md against the config schema in the code, so they cannot drift.

Three links are checked:

1. ``config.schema()`` against the code: every ``known_keys`` call in config.py and
   routeconf.py (and every ``_unknown`` call in waf.py) is reached while the
   shipped examples and the reference's TOML blocks are parsed, and the keys it
   accepts there are exactly the schema's keys for that table path. A new table or
   a new key in the code that schema() does not know fails here.
2. The reference against ``config.schema()``: each key table of
   docs/configuration.md is marked with the table path it documents
   (``<!-- keys: upstreams.NAME -->`` on the line before the table); every path of
   the schema has a marked table, and its first column names exactly the keys
   the code accepts: a key the code accepts but the reference leaves out, or a key
   the reference documents but the code refuses, fails here.
3. Every shipped example and every whole config in the reference (a TOML block
   with listeners and routes) and the README passes ``fastproxy check``.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from fastproxy import config, routeconf, waf
from fastproxy.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
README = ROOT / "README.md"
EXAMPLES = sorted((ROOT / "examples").glob("*.toml"))

TOP_LEVEL = "(top-level)"  # how a marker names the path "" (the file's own keys)
_MARK_RE = re.compile(r"^<!-- keys: (\S+(?: \S+)*) -->\s*$")
_FENCE_RE = re.compile(r"^```toml\s*\n(.*?)^```\s*$", re.M | re.S)
# The first cell of a key row: a key, or several separated by commas.
_KEY_CELL_RE = re.compile(r"^`[A-Za-z0-9_]+`(?:, `[A-Za-z0-9_]+`)*")
# Keys that parse_config takes out of a table before the table's known_keys check
# (and checks on their own); schema() lists them with the table.
_TAKEN_OUT_BEFORE_CHECK = {"log": {"access_outputs"}}


# --------------------------------------------------------------------------
# Reading the reference


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def documented_keys(text: str) -> tuple[dict[str, list[str]], list[str]]:
    """The marked key tables of a reference: path -> keys in the first column of its
    tables, and the problems found on the way (a marker without a table, a key table
    without a marker, a row without a key, a key twice in one table).

    A marker names one path or several separated by spaces (one table documents
    ``request_headers`` and ``response_headers`` alike); a path may have several
    tables (a section's keys repeated in the subsection that explains them)."""
    lines = text.splitlines()
    tables: dict[str, list[str]] = {}
    problems: list[str] = []
    marked_lines: set[int] = set()
    in_fence = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_fence = not in_fence
        match = None if in_fence else _MARK_RE.match(line)
        if match is None:
            continue
        paths = ["" if p == TOP_LEVEL else p for p in match.group(1).split()]
        where = f"line {i + 1} (keys: {match.group(1)})"
        j = i + 1
        if j >= len(lines) or not lines[j].startswith("|") or _cells(lines[j])[0].lower() != "key":
            problems.append(f"{where}: not followed by a table whose first column is 'key'")
            continue
        marked_lines.add(j)
        keys: list[str] = []
        for row in lines[j + 2:]:
            if not row.startswith("|"):
                break
            found = _KEY_CELL_RE.match(_cells(row)[0])
            if found is None:
                problems.append(f"{where}: a row whose first cell names no `key`: {row[:60]!r}")
                continue
            for name in re.findall(r"`([^`]+)`", found.group()):
                if name in keys:
                    problems.append(f"{where}: {name!r} twice in one table")
                else:
                    keys.append(name)
        for path in paths:
            tables.setdefault(path, []).extend(k for k in keys if k not in tables.get(path, ()))
    in_fence = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_fence = not in_fence
        if not in_fence and line.startswith("|") and _cells(line)[0].lower() == "key" \
                and i not in marked_lines:
            problems.append(f"line {i + 1}: a key table without a <!-- keys: PATH --> marker")
    return tables, problems


def reference_drift(text: str, schema: Mapping[str, Sequence[str]]) -> list[str]:
    """Every difference between the reference's key tables and the schema."""
    tables, problems = documented_keys(text)
    for path, accepted in schema.items():
        shown = path or TOP_LEVEL
        if path not in tables:
            problems.append(f"{shown}: no key table in the reference "
                            f"(add one after <!-- keys: {shown} -->)")
            continue
        documented = tables[path]
        for name in accepted:
            if name not in documented:
                problems.append(f"{shown}: {name!r} is accepted by the code but not documented")
        for name in documented:
            if name not in accepted:
                problems.append(f"{shown}: {name!r} is documented but the code refuses it")
    for path in tables:
        if path not in schema:
            problems.append(f"{path or TOP_LEVEL}: documented, but the config has no such table")
    return problems


def toml_blocks(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each ```toml block."""
    text = path.read_text(encoding="utf-8")
    for match in _FENCE_RE.finditer(text):
        yield text.count("\n", 0, match.start()) + 2, match.group(1)


def _is_whole_config(data: Mapping[str, Any]) -> bool:
    return all(name in data for name in ("listeners", "upstreams", "routes"))


def error_example() -> tuple[str, list[str]]:
    """The reference's `bad.toml` (How errors are reported) and the lines it says
    `fastproxy check bad.toml` prints."""
    text = REFERENCE.read_text(encoding="utf-8")
    start = text.index("Given this `bad.toml`:")
    block = _FENCE_RE.search(text, start)
    assert block is not None
    command = "$ fastproxy check bad.toml\n"
    out = text.index(command, block.end()) + len(command)
    lines = text[out:text.index("$ echo $?", out)].splitlines()
    return block.group(1), lines


# --------------------------------------------------------------------------
# 2. The reference against the schema


def test_reference_documents_exactly_the_keys_the_code_accepts() -> None:
    problems = reference_drift(REFERENCE.read_text(encoding="utf-8"), config.schema())
    assert problems == [], "docs/configuration.md has drifted from config.schema():\n" \
        + "\n".join(problems)


def _remove_row(text: str, marker: str, name: str) -> str:
    start = text.index(f"<!-- keys: {marker} -->")
    row = text.index(f"| `{name}` |", start)
    end = text.index("\n", row) + 1
    return text[:row] + text[end:]


def test_the_reference_check_sees_a_removed_or_invented_key() -> None:
    """The check above can fail: a key row taken out, a key made up, an unmarked or
    unknown table are all reported."""
    text = REFERENCE.read_text(encoding="utf-8")
    schema = config.schema()
    assert reference_drift(text, schema) == []

    removed = _remove_row(text, "server", "via")
    assert reference_drift(removed, schema) == [
        "server: 'via' is accepted by the code but not documented"]
    removed = _remove_row(text, "upstreams.NAME.health_check", "interval")
    assert reference_drift(removed, schema) == [
        "upstreams.NAME.health_check: 'interval' is accepted by the code but not documented"]

    start = text.index("<!-- keys: routes[] -->")
    row = text.index("| `", start)
    invented = text[:row] + "| `upstream_group` | string | none | made up |\n" + text[row:]
    assert reference_drift(invented, schema) == [
        "routes[]: 'upstream_group' is documented but the code refuses it"]

    marker = text.index("<!-- keys: admin -->\n")
    unmarked = text[:marker] + text[marker:].replace("<!-- keys: admin -->\n", "", 1)
    table_line = text.count("\n", 0, marker) + 1  # the table moved up into the marker's line
    assert reference_drift(unmarked, schema) == [
        f"line {table_line}: a key table without a <!-- keys: PATH --> marker",
        "admin: no key table in the reference (add one after <!-- keys: admin -->)",
    ]

    unknown = text.replace("<!-- keys: admin -->", "<!-- keys: admins -->", 1)
    problems = reference_drift(unknown, schema)
    assert "admins: documented, but the config has no such table" in problems

    # A key the code stops accepting (the schema loses it) is caught the other way.
    fewer = {**schema, "server": tuple(k for k in schema["server"] if k != "via")}
    assert reference_drift(text, fewer) == [
        "server: 'via' is documented but the code refuses it"]


# --------------------------------------------------------------------------
# 1. The schema against the code


def _call_sites() -> dict[tuple[str, int], str]:
    """(file, line) of every key check in the config code -> a description. Both the
    call's first line and its method name's line are listed (the line a frame
    reports for a call spread over lines differs between Python versions)."""
    sites: dict[tuple[str, int], str] = {}
    for module, name in ((config, "known_keys"), (routeconf, "known_keys"), (waf, "_unknown")):
        file = module.__file__
        assert file is not None
        tree = ast.parse(Path(file).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else \
                func.id if isinstance(func, ast.Name) else None
            if called != name:
                continue
            text = f"{Path(file).name}:{node.lineno}"
            for line in {node.lineno, func.end_lineno or node.lineno}:
                sites[(file, line)] = text
    return sites


def _path_patterns(schema: Mapping[str, Sequence[str]]) -> list[tuple[re.Pattern[str], str]]:
    name = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")'
    patterns = []
    for path in schema:
        regex = re.escape(path).replace(r"\[\]", r"\[\d+\]").replace("NAME", name)
        # waf.rules[].match is one condition or an array of them.
        patterns.append((re.compile(regex + r"(?:\[\d+\])?"), path))
    return patterns


def _schema_path(concrete: str, patterns: list[tuple[re.Pattern[str], str]]) -> str | None:
    found = [path for regex, path in patterns if regex.fullmatch(concrete)]
    assert len(found) <= 1, f"{concrete!r} matches several schema paths: {found}"
    return found[0] if found else None


def _corpus() -> Iterator[tuple[str, Any]]:
    """Every shipped example and every TOML block of the reference, parsed."""
    for path in EXAMPLES:
        yield str(path), tomllib.loads(path.read_text(encoding="utf-8"))
    for doc in (REFERENCE, README):
        for line, block in toml_blocks(doc):
            try:
                data = tomllib.loads(block)
            except tomllib.TOMLDecodeError:
                continue  # reported by test_every_toml_block_of_the_docs_is_toml
            if block == error_example()[0]:
                continue  # wrong on purpose (test_the_error_example_prints_...)
            # A fragment showing one entry as `[routes.match]` (not `[[routes]]`).
            for name in ("listeners", "routes"):
                if isinstance(data.get(name), dict):
                    data[name] = [data[name]]
            # A fragment of a route's own keys (`redirect = { ... }`).
            if data and not set(data) & set(config.schema()[""]):
                data = {"routes": [data]}
            yield f"{doc.name}:{line}", data


def test_schema_matches_every_key_check_in_the_code(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    calls: list[tuple[str, int, str, tuple[str, ...]]] = []
    known_keys = routeconf.KeyChecker.known_keys
    unknown = waf._unknown

    def spy_known_keys(self: Any, table: Any, path: str, known: Sequence[str]) -> None:
        caller = sys._getframe(1)
        calls.append((caller.f_code.co_filename, caller.f_lineno, path, tuple(known)))
        known_keys(self, table, path, known)

    def spy_unknown(table: Any, allowed: Sequence[str], key: str) -> None:
        caller = sys._getframe(1)
        calls.append((caller.f_code.co_filename, caller.f_lineno, key, tuple(allowed)))
        unknown(table, allowed, key)

    monkeypatch.setattr(routeconf.KeyChecker, "known_keys", spy_known_keys)
    monkeypatch.setattr(waf, "_unknown", spy_unknown)
    for source, data in _corpus():
        try:
            parse_config(data, source, base_dir=str(tmp_path))
        except ConfigError:
            pass  # fragments lack the required tables; their own tables are checked anyway

    schema = config.schema()
    patterns = _path_patterns(schema)
    sites = _call_sites()
    reached: set[str] = set()
    problems: list[str] = []
    for file, line, concrete, known in calls:
        site = sites.get((file, line))
        if site is None:
            continue  # a check made from elsewhere (none today): not the config's schema
        reached.add(site)
        path = _schema_path(concrete, patterns)
        if path is None:
            problems.append(f"{site}: checks the keys of {concrete!r}, a table schema() "
                            "does not list")
            continue
        expected = set(schema[path]) - _TAKEN_OUT_BEFORE_CHECK.get(path, set())
        if set(known) != expected:
            problems.append(f"{site}: {path or TOP_LEVEL} accepts {sorted(set(known))}, "
                            f"schema() lists {sorted(expected)}")
    for site in sorted(set(sites.values()) - reached):
        problems.append(f"{site}: a key check that neither the examples nor the reference's "
                        "TOML blocks reach; add an example of that table to the reference")
    assert problems == [], "\n".join(sorted(set(problems)))
    # The spies saw the whole schema, not only part of it.
    seen = {_schema_path(concrete, patterns) for _, _, concrete, _ in calls}
    assert seen == set(schema)


# --------------------------------------------------------------------------
# 3. Whole configs pass `fastproxy check`


def _whole_configs() -> list[tuple[str, str]]:
    found = []
    for doc in (REFERENCE, README):
        for line, block in toml_blocks(doc):
            try:
                data = tomllib.loads(block)
            except tomllib.TOMLDecodeError:
                continue
            if _is_whole_config(data) and block != error_example()[0]:
                found.append((f"{doc.name}:{line}", block))
    return found


def test_every_toml_block_of_the_docs_is_toml() -> None:
    """A reader copies these: each must at least parse (an inline table over several
    lines, for one, does not)."""
    problems = []
    for doc in (REFERENCE, README):
        for line, block in toml_blocks(doc):
            try:
                tomllib.loads(block)
            except tomllib.TOMLDecodeError as exc:
                problems.append(f"{doc.name}, the block at line {line}: {exc}")
    assert problems == []


def test_no_example_in_the_docs_uses_a_key_the_code_refuses(tmp_path: Path) -> None:
    """Fragments need not make a whole config (the listener, upstreams, files they
    name are elsewhere), but none may hold a key the loader does not know, nor use an
    array of tables where a table goes (or the other way round)."""
    problems = []
    for source, data in _corpus():
        try:
            parse_config(data, source, base_dir=str(tmp_path))
        except ConfigError as exc:
            problems += [str(issue) for issue in exc.errors
                         if issue.reason.startswith(("unknown key", "expected a table",
                                                     "expected an array"))]
    assert problems == []


def test_the_reference_holds_whole_configs() -> None:
    names = [name for name, _ in _whole_configs()]
    assert any(name.startswith("configuration.md") for name in names)
    assert any(name.startswith("README.md") for name in names)


@pytest.mark.parametrize(("name", "text"), _whole_configs(), ids=lambda v: str(v)[:40])
def test_whole_configs_in_the_docs_pass_check(name: str, text: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from fastproxy.cli import main

    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    status = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert status == 0, f"{name}: {err}"
    assert out.startswith("config OK:")


def test_the_error_example_prints_what_the_reference_shows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from fastproxy.cli import main

    text, expected = error_example()
    assert len(expected) >= 3
    (tmp_path / "bad.toml").write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "bad.toml"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == expected


@pytest.mark.parametrize("example", [p for p in EXAMPLES if p.name != "tls.toml"],
                         ids=lambda p: p.name)
def test_every_shipped_example_passes_check(example: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """tls.toml is checked beside certificates made for it in test_cli_check.py."""
    from fastproxy.cli import main

    status = main(["check", str(example)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert out.startswith("config OK:")
    assert "error" not in err
