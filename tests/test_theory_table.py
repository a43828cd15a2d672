"""docs/theory.md's equation-to-code tables name code that exists: every file in
a row's first column, and every identifier in its last column defined in one of them."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THEORY = (ROOT / "docs" / "theory.md").read_text()
DEFINED = r"(?:def|class|cdef|cpdef|ctypedef|struct|enum)\b[^\n(=]*?\b{0}\s*[(:\[]|^\s*{0}\s*[:=]|\b{0}\s*=|cdef [^\n]*\b{0}\b"


def table_rows():
    rows = []
    for block in re.findall(r"^\| file \| equations \| where \|\n\|[-| ]+\|\n((?:\|.*\|\n)+)",
                            THEORY, flags=re.M):
        for line in block.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.append((cells[0], cells[-1]))
    return rows


ROWS = table_rows()


def test_the_tables_are_found():
    assert len(ROWS) > 30


@pytest.mark.parametrize("files, where", ROWS, ids=[r[0] for r in ROWS])
def test_row_names_existing_code(files, where):
    paths = [ROOT / f for f in re.findall(r"`([^`]+)`", files)]
    missing = [str(p.relative_to(ROOT)) for p in paths if not p.exists()]
    assert paths and not missing, f"no such file: {missing}"
    text = "\n".join(p.read_text() for p in paths)
    where = re.sub(r"\$[^$]*\$", "", where)   # formulas are not code
    undefined = []
    for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_.]*)`", where):
        for part in name.split("."):
            if len(part) <= 2 or part in {"lmmfast", "optimize", "design", "crossprod"}:
                continue
            if not re.search(DEFINED.format(re.escape(part)), text, flags=re.M):
                undefined.append(part)
    assert not undefined, f"{files}: not defined there: {undefined}"
