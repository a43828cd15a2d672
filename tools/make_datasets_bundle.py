"""Rebuild the bundled datasets from the lme4 reference directory.

Usage::

    python tools/make_datasets_bundle.py /path/to/shared/reference

Copies ``data/NAME.csv`` next to this script (InstEval as ``InstEval.csv.gz``,
gzip level 9, reproducible: no file name, zero mtime) and writes
``schema.json`` from the ``datasets`` section of ``lme4_results.json``.
"""

import gzip
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "lmmfast" / "datasets" / "data"
COMPRESSED = {"InstEval"}
COLUMN_KEYS = ("name", "type", "nlevels", "levels")


def make_schema(results):
    """Return ``{name: {file, nrow, columns}}`` from parsed lme4_results.json."""
    schema = {}
    for name, dataset in results["datasets"].items():
        suffix = ".csv.gz" if name in COMPRESSED else ".csv"
        columns = [
            {key: column[key] for key in COLUMN_KEYS if key in column}
            for column in dataset["columns"]
        ]
        schema[name] = {"file": name + suffix, "nrow": dataset["nrow"], "columns": columns}
    return schema


def main(reference):
    """Write the data files and schema.json from the reference directory."""
    reference = Path(reference)
    results = json.loads((reference / "lme4_results.json").read_text(encoding="utf-8"))
    schema = make_schema(results)
    for name, spec in schema.items():
        source = reference / "data" / f"{name}.csv"
        target = HERE / spec["file"]
        if name in COMPRESSED:
            target.write_bytes(gzip.compress(source.read_bytes(), compresslevel=9, mtime=0))
        else:
            shutil.copyfile(source, target)
    text = json.dumps(schema, indent=1) + "\n"
    (HERE / "schema.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
