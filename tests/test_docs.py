"""The docs cannot drift from what they describe.

1. **No stale README number.** Every number quoted in a table of the README's "## Results" section
   is checked against the committed results file its row links to. The convention the tables
   follow (and this test enforces):

   * The **first cell of every row** links one results page, ``benchmarks/results/<name>.md``;
     the numbers come from its sibling ``<name>.json``. When the JSON holds many records (the
     engine benchmarks' ``cases``), the first cell also selects one with a hidden comment,
     ``<!-- at cases[model=R110 batch=64 mix=iid:0.31] -->``: the list ``cases``, the one element
     whose fields equal those values (compared as text); every key of the row is read under it.
   * **Every header cell** says what its column holds, in a hidden comment:
     ``<!-- label -->`` -- words that describe the row (free text, but no measurement in it: a
     number with ``%``, ``x`` or ``min`` fails); ``<!-- ~ KEY -->`` -- a label that must name the
     record (its text and the value at KEY, markup and case ignored, contain one another);
     ``<!-- = KEY1; KEY2; ... -->`` -- measured numbers: the n-th number of a cell is the value
     at the n-th KEY (a cell may quote fewer numbers than keys, never more).
   * A **data cell** may override its column's keys with its own ``<!-- = KEY; ... -->`` (a row
     whose JSON has another layout, e.g. the demo's ``blockdrop.accuracy``).
   * KEY is a dotted path into the JSON (``strategies.auto.speedup``; a segment may select a list
     element as above), or ``A/B``, the ratio of two paths.
   * A number matches when it equals the value as rounded to the digits shown (``%``: the value
     x 100). ``1,000`` is 1000. A measured cell without a number must say "not measured" or
     "not recorded".

   Nothing is skipped: a table without header comments, a row without a results link, a missing
   JSON or key, or a number that does not match its value fails the test.
2. **docs/API.md is generated** from the docstrings (``scripts/gen_api.py``) and equals what the
   script writes now.
3. **Every relative link** in the README, docs/ and benchmarks/README.md resolves (the file, and
   a ``#heading`` anchor in a markdown file).
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

_COMMENT = re.compile(r"<!--(.*?)-->", re.DOTALL)
_LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
# a number as quoted: 91.80%, 1.06x, 22.74, 1,000; not a digit inside a word (R110, ResNet-56)
_NUMBER = re.compile(r"(?<![\w.\-])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:(%|x)(?!\w)|(?![\w.%]))")
_MEASURE_IN_LABEL = re.compile(r"\d\s*(%|x\b|min\b)")


# ------------------------------------------------------------------------------ README tables


def _results_section(text: str) -> str:
    start = text.index("\n## Results")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _cells(line: str) -> list[str]:
    """The cells of a markdown table row (pipes inside comments or code are not expected)."""
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _tables(section: str) -> list[list[list[str]]]:
    """Each table as rows of cells: the header first, the separator left out."""
    tables, cur = [], None
    for line in section.splitlines():
        if line.lstrip().startswith("|"):
            if cur is None:
                cur = []
                tables.append(cur)
            if not re.fullmatch(r"\|?[\s:|-]+\|?", line.strip()):
                cur.append(_cells(line))
        else:
            cur = None
    return tables


def _comment(cell: str) -> str | None:
    found = _COMMENT.findall(cell)
    return found[0].strip() if found else None


def _visible(cell: str) -> str:
    """The cell as a reader sees it: comments dropped, links reduced to their text."""
    return _LINK.sub(r"\1", _COMMENT.sub("", cell))


def _split_path(path: str) -> list[str]:
    """``a.b[k=v.w x=y].c`` -> ``["a", "b[k=v.w x=y]", "c"]`` (dots inside brackets kept)."""
    parts, depth, cur = [], 0, ""
    for ch in path.strip():
        if ch == "." and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        cur += ch
    return parts + [cur]


def _lookup(data: Any, path: str, where: str) -> Any:
    for seg in _split_path(path):
        m = re.fullmatch(r"([^\[]+)(?:\[(.*)\])?", seg)
        assert m, f"{where}: bad key segment {seg!r} in {path!r}"
        name, sel = m.groups()
        assert isinstance(data, dict) and name in data, f"{where}: no key {name!r} (path {path!r})"
        data = data[name]
        if sel is not None:
            want = dict(kv.split("=", 1) for kv in sel.split())
            hits = [e for e in data if all(str(e.get(k)) == v for k, v in want.items())]
            assert len(hits) == 1, f"{where}: [{sel}] selects {len(hits)} elements of {name!r}, not one"
            data = hits[0]
    return data


def _value(data: Any, key: str, where: str) -> float:
    if "/" in key:
        a, b = key.split("/", 1)
        return float(_value(data, a, where)) / float(_value(data, b, where))
    v = _lookup(data, key, where)
    assert isinstance(v, (int, float)) and not isinstance(v, bool), f"{where}: {key!r} is {v!r}, not a number"
    return float(v)


def _numbers(text: str) -> list[tuple[float, int, str]]:
    """``(value, decimals shown, unit)`` of each number in ``text``."""
    return [
        (float(i.replace(",", "") + (f or "")), len(f) - 1 if f else 0, u or "")
        for i, f, u in _NUMBER.findall(text)
    ]


def _row_source(first: str, where: str) -> tuple[Any, str]:
    """The JSON a row's numbers come from (under its ``at`` selector) and the page it links."""
    pages = [t for _, t in _LINK.findall(first) if t.startswith("benchmarks/results/") and t.endswith(".md")]
    assert len(pages) == 1, f"{where}: the first cell must link one benchmarks/results/*.md page, has {pages}"
    page = ROOT / pages[0]
    assert page.is_file(), f"{where}: {pages[0]} does not exist"
    src = page.with_suffix(".json")
    assert src.is_file(), f"{where}: {pages[0]} has no sibling {src.name}"
    data = json.loads(src.read_text())
    at = [c.strip()[3:] for c in _COMMENT.findall(first) if c.strip().startswith("at ")]
    if at:
        data = _lookup(data, at[0], where)
    return data, pages[0]


def _column_specs(header: list[str], where: str) -> list[str]:
    specs = []
    for i, cell in enumerate(header):
        spec = _comment(cell)
        assert spec is not None and (spec == "label" or spec[:1] in "=~"), (
            f"{where}: header cell {i + 1} ({_visible(cell)!r}) needs <!-- label -->, <!-- ~ KEY --> "
            f"or <!-- = KEY; ... --> (see tests/test_docs.py)"
        )
        specs.append(spec)
    return specs


def _words(text: str) -> str:
    """``text`` lower-cased, every run of other characters than letters and digits one space."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _check_cell(cell: str, spec: str, data: Any, where: str) -> int:
    """Check one cell against its spec; returns how many numbers it traced."""
    text = _visible(cell)
    own = _comment(cell)
    if own is not None and own.startswith("="):
        spec = own
    if spec == "label":
        assert not _MEASURE_IN_LABEL.search(text), f"{where}: a measurement in a label cell: {text!r}"
        return 0
    if spec.startswith("~"):
        want = _words(str(_lookup(data, spec[1:].strip(), where)))
        assert want in _words(text) or _words(text) in want, (
            f"{where}: {text!r} does not name the record's {spec[1:].strip()} {want!r}"
        )
        return 0
    keys = [k.strip() for k in spec[1:].split(";") if k.strip()]
    nums = _numbers(text)
    if not nums:
        assert re.search(r"not (measured|recorded)", text), (
            f"{where}: no number in a measured cell {text!r} (write 'not measured' if there is none)"
        )
        return 0
    assert len(nums) <= len(keys), (
        f"{where}: {text!r} quotes {len(nums)} numbers, its column names {len(keys)} keys {keys}"
    )
    for (shown, decimals, unit), key in zip(nums, keys):
        v = _value(data, key, where) * (100 if unit == "%" else 1)
        assert abs(shown - v) <= 0.5 * 10**-decimals + 1e-9, (
            f"{where}: {shown:.{decimals}f}{unit} quoted for {key!r}, the results file says {v:.6g}"
        )
    return len(nums)


def check_results_tables(readme_text: str) -> int:
    """Check every table of the Results section (module docstring); returns the numbers traced."""
    tables = _tables(_results_section(readme_text))
    assert tables, "README: no table in the Results section"
    traced = 0
    for t, (header, *rows) in enumerate(tables, 1):
        specs = _column_specs(header, f"Results table {t}")
        assert rows, f"Results table {t}: no rows"
        for r, row in enumerate(rows, 1):
            where = f"Results table {t}, row {r} ({_visible(row[0])[:40]!r})"
            assert len(row) == len(specs), f"{where}: {len(row)} cells, the header has {len(specs)}"
            data, _ = _row_source(row[0], where)
            for c, (cell, spec) in enumerate(zip(row, specs)):
                traced += _check_cell(cell, spec, data, f"{where}, column {c + 1}")
    return traced


def test_readme_results_numbers_come_from_the_committed_results_files():
    traced = check_results_tables(README.read_text())
    assert traced >= 50  # the tables quote many numbers: this test must be reading them


@pytest.mark.parametrize(
    "old, new",
    [
        ("| 86.72%", "| 86.82%"),  # an accuracy
        ("| 20.97 |", "| 20.87 |"),  # blocks
        ("| 2.04 | 1.34x", "| 2.14 | 1.34x"),  # milliseconds
        ("| 3.12x | 0.93 | 0.92 |", "| 3.12x | 0.93 | 0.82 |"),  # capacity mode, realized / ideal
        ("**1.11x** (0.89)", "**1.11x** (0.91)"),  # a GPU realized / ideal
        ("| 7.92x |", "| 7.82x |"),  # the demo's StaticK speedup
        ("<!-- = accuracy -->", ""),  # a header without its key
    ],
)
def test_a_changed_readme_number_fails(old, new):
    text = README.read_text()
    assert old in text, f"the README no longer holds {old!r}: update this test's mutations"
    with pytest.raises(AssertionError):
        check_results_tables(text.replace(old, new, 1))


def test_number_parsing_and_rounding():
    assert _numbers("91.80% at 22.74 / 27 (84%), 1,000 images, 1.06x") == [
        (91.8, 2, "%"),
        (22.74, 2, ""),
        (27.0, 0, ""),
        (84.0, 0, "%"),
        (1000.0, 0, ""),
        (1.06, 2, "x"),
    ]
    assert _numbers("CIFAR R110, ResNet-56, cifar10") == []
    data = {"a": 0.9179999828338623, "cases": [{"m": "R1", "v": 3.1453}, {"m": "R2", "v": 1.0}]}
    assert _check_cell("91.80%", "= a", data, "t") == 1
    assert _check_cell("3.15x", "= cases[m=R1].v", data, "t") == 1
    with pytest.raises(AssertionError):
        _check_cell("91.7%", "= a", data, "t")
    with pytest.raises(AssertionError):
        _check_cell("3.16x", "= cases[m=R1].v", data, "t")


# ------------------------------------------------------------------------------------ API.md


def test_api_md_is_generated_from_the_docstrings():
    spec = importlib.util.spec_from_file_location("gen_api", ROOT / "scripts" / "gen_api.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    committed = (ROOT / "docs" / "API.md").read_text()
    assert committed == gen.generate(), "docs/API.md is out of date: run python scripts/gen_api.py"


# ------------------------------------------------------------------------------------- links


def _anchors(md: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings."""
    out = set()
    for line in md.read_text().splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def _doc_files() -> list[Path]:
    return [
        README,
        ROOT / "CHANGELOG.md",
        ROOT / "benchmarks" / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
    ]


@pytest.mark.parametrize("doc", _doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    text = re.sub(
        r"```.*?```|``[^\n]*?``|`[^`\n]*`", "", doc.read_text(), flags=re.DOTALL
    )  # code is not a link
    for _, target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.exists(), f"{doc.relative_to(ROOT)}: link to {target} -- no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{doc.relative_to(ROOT)}: link to {target} -- no such heading"
