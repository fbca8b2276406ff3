"""`run --table`: nights land in the Delta Lake results table through the real pipeline.

Table-level behaviour (concurrent commits, SIGKILL before a commit, vacuum, the GCS emulator) is
in tests/test_table.py; here the launcher's whole path: Beam writes into the night's folders,
one commit per table, reruns replace their night, and --skip_scored leaves out (and counts)
what the table already holds.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from deltalake import DeltaTable

from pipeline.run import main, run
from tests.conftest import REPO


def _night(table: Path, kind: str = "records"):
    return DeltaTable(str(table / kind))


def _rows(table: Path, scan_date: str, kind: str = "records") -> list[dict]:
    rows = _night(table, kind).to_pyarrow_table().to_pylist()
    return [r for r in rows if str(r["scan_date"]) == scan_date]


@pytest.fixture()
def inputs(real_data_dir, tmp_path) -> tuple[str, str]:
    """(yesterday's scan: 10 hazelnut images, 5 new images in a plain folder)."""
    new = tmp_path / "new"
    new.mkdir()
    for path in sorted((real_data_dir / "mvtec_ad_256" / "transistor" / "test").glob("*/*.png"))[:5]:
        shutil.copy(path, new / f"{path.parent.name}-{path.name}")
    return str(real_data_dir / "mvtec_ad_256" / "hazelnut"), str(new)


def _run(store: str, tmp_path: Path, inputs: str, scan_date: str, run_id: str, *extra: str):
    return run([f"--input={inputs}", f"--output={tmp_path / 'out'}", f"--model_store={store}", "--runner=FnApiRunner",
                f"--table={tmp_path / 'table'}", f"--scan_date={scan_date}", f"--run_id={run_id}",
                "--write_overlays=none", "--batch_size=4", *extra])


def test_nights_append_reruns_replace_and_skip_scored_counts(untrained_store, tmp_path, inputs):
    table = tmp_path / "table"
    yesterday, new = inputs
    first = _run(untrained_store, tmp_path, yesterday, "2026-12-05", "n1")
    assert first.num_records == 10 and "night 2026-12-05" in first.table
    assert len(_rows(table, "2026-12-05")) == 10 and len(_rows(table, "2026-12-05", "metrics")) == 1
    assert not list((tmp_path / "out" / "n1").glob("records-*.parquet"))  # the records live in the table only

    # Tonight: yesterday's images again plus 5 new ones; only the new ones are scored.
    second = _run(untrained_store, tmp_path, f"{yesterday},{new}", "2026-12-06", "n2", "--skip_scored")
    assert second.skipped_scored == {"hazelnut": 10} and second.num_records == 5 and second.lost == 0
    assert len(_rows(table, "2026-12-06")) == 5 and len(_rows(table, "2026-12-05")) == 10
    report = (tmp_path / "out" / "n2" / "report.html").read_text()
    assert "already scored in the results table" in report

    # A rerun of tonight replaces tonight in one commit; it does not skip tonight's own images.
    version = _night(table).version()
    again = _run(untrained_store, tmp_path, f"{yesterday},{new}", "2026-12-06", "n2b", "--skip_scored")
    assert again.num_records == 5 and _night(table).version() == version + 1
    rows = _rows(table, "2026-12-06")
    assert len(rows) == 5 and {r["run_id"] for r in rows} == {"n2b"}
    assert len(_night(table).to_pyarrow_table()) == 15  # every image once per night it was scored
    assert {r["content_sha256"] for r in _rows(table, "2026-12-05")}.isdisjoint(r["content_sha256"] for r in rows)

    # Time travel: the version before the rerun still reads the first run of tonight.
    old = DeltaTable(str(table / "records"), version=version).to_pyarrow_table().to_pylist()
    assert {r["run_id"] for r in old if str(r["scan_date"]) == "2026-12-06"} == {"n2"}

    # The README's queries, on this table.
    part = _rows(table, "2026-12-05")[0]["source_uri"]
    found = _readme_queries(table, part, version)
    assert found["ng_rate"].index.get_level_values("category").unique().tolist() == ["hazelnut", "object"]
    assert found["history"]["run_id"].tolist() == ["n1"]
    assert set(found["then"]["scan_date"].astype(str)) == {"2026-12-05", "2026-12-06"} and len(found["then"]) == 15
    assert len(found["ng_sql"]) == 2 and found["ng_sql"]["ng_rate"].between(0, 1).all()


def _readme_queries(table: Path, part: str, version: int) -> dict:
    """Run the README's query block (after `<!-- table-queries -->`) with its three settings
    pointed at `table`; returns the names it defines."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- table-queries -->\s*```python\n(.*?)```", text, re.S).group(1)
    for name, value in (("TABLE", str(table)), ("PART", part), ("VERSION", version)):
        block, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", block, flags=re.M)
        assert count == 1, name
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own example
    return namespace


def test_table_flags_are_checked_before_any_work(untrained_store, tmp_path, inputs, capsys):
    base = [f"--input={inputs[0]}", f"--output={tmp_path / 'out'}", f"--model_store={untrained_store}",
            "--runner=FnApiRunner"]
    assert main(base + ["--skip_scored"]) == 2
    assert "--skip_scored needs --table" in capsys.readouterr().err
    assert main(base + [f"--table={tmp_path / 't'}", "--scan_date=2026-13-01"]) == 2
    assert "--scan_date" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
