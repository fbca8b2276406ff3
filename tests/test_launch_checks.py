"""What the launcher refuses before any work (exit 2, one line naming the flag), and how a run
folder is rewritten: `_SUCCESS.json` never lists files of two runs, nor misses a file it holds.

The runs here use the seconds-long untrained tiny store (`untrained_store`): they test the plumbing.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.run import main, run
from pipeline.stored_records import read_rows

from .conftest import REPO

MVTEC = REPO / "tests" / "data" / "real" / "mvtec_ad_256"


@pytest.fixture()
def no_model_loading(monkeypatch):
    """Any attempt to load weights fails the test: the checks must come first."""
    import model_store.loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(model_store.loading, "load_weights", refuse)


def _base(store: str, out: Path) -> list[str]:
    return [f"--input={MVTEC}", f"--output={out}", f"--model_store={store}"]


@pytest.mark.parametrize(
    "flag,message",
    [
        ("--mask_treshold=0.3", "unknown flag --mask_treshold; did you mean --mask_threshold?"),
        ("--batchsize=4", "unknown flag --batchsize; did you mean --batch_size?"),
        ("--runer=DataflowRunner", "unknown flag --runer; did you mean --runner?"),
        ("stray", "unexpected argument 'stray'"),
        ("--runner=NoSuchRunner", "--runner=NoSuchRunner: Unexpected pipeline runner"),
        ("--run_id=..", "--run_id must not start with '.'"),
        ("--run_id=.", "--run_id must not start with '.'"),
        ("--run_id=a/b", "--run_id may only hold"),
        ("--mask_threshold=1.5", "--mask_threshold must be in [0, 1]"),
    ],
)
def test_bad_flags_exit_2_before_any_work(flag, message, untrained_store, tmp_path, capsys, no_model_loading):
    out = tmp_path / "out"
    assert main(_base(untrained_store, out) + [flag]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {err[0][7:]}"] and message in err[0]  # one line
    assert not out.exists()


def test_beam_and_runner_flags_still_pass(untrained_store, tmp_path, capsys, no_model_loading):
    argv = _base(untrained_store, tmp_path / "out") + [
        "--direct_running_mode=multi_processing", "--direct_num_workers=2", "--experiments=foo", "--graph_only"]
    assert main(argv) == 0
    assert "ReadImages" in capsys.readouterr().out


def test_unwritable_output_is_found_at_launch(untrained_store, tmp_path, capsys, no_model_loading):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(_base(untrained_store, blocker / "out")) == 2
    assert "--output: cannot write to" in capsys.readouterr().err


def test_dataflow_graph_only_with_a_bad_bucket_is_a_clear_error(untrained_store, tmp_path, capsys, no_model_loading):
    argv = _base(untrained_store, tmp_path / "out") + [
        "--runner=DataflowRunner", "--project=fake-project", "--region=us-central1",
        "--temp_location=gs://Not_A_Bucket/tmp", "--graph_only"]
    start = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - start < 30  # no cloud-storage retries
    assert "--temp_location: Invalid GCS bucket" in capsys.readouterr().err


def test_help_lists_every_project_flag_with_its_default():
    done = subprocess.run([sys.executable, "-m", "pipeline.run", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from pipeline.flags import help_parser

    flags = [a.option_strings[0] for a in help_parser("x", "").__dict__["_actions"] if a.option_strings[0] != "-h"]
    assert len(flags) >= 20
    for flag in flags:
        assert flag in done.stdout, flag
    assert "(default: tiny)" in done.stdout and "--runner" in done.stdout


# ------------------------------------------------------------------------------ reruns


def _listed(run_dir: Path) -> dict:
    return json.loads((run_dir / "_SUCCESS.json").read_text())


def _output_files(run_dir: Path) -> set[str]:
    """Paths of the run folder's files (overlays included) relative to it, the marker left out."""
    return {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file() and p.name != "_SUCCESS.json"}


def _assert_consistent(run_dir: Path) -> None:
    """A marker, where there is one, lists exactly the output files the folder holds."""
    if not (run_dir / "_SUCCESS.json").exists():
        return
    listed = {Path(url.replace("file://", "")).relative_to(run_dir).as_posix() for url in _listed(run_dir)["files"]}
    assert listed == _output_files(run_dir)


def _run(store: str, out: Path, *extra: str) -> object:
    return run(_base(store, out) + ["--run_id=night", "--runner=FnApiRunner", "--batch_size=4", *extra])


def test_rerun_with_fewer_shards_and_without_eval_leaves_one_runs_files(untrained_store, tmp_path):
    out = tmp_path / "out"
    first = _run(untrained_store, out, "--num_shards=3", "--eval=on")
    run_dir = out / "night"
    assert {"metrics.json", "records-00002-of-00003.parquet", "report.html"} <= _output_files(run_dir)
    _assert_consistent(run_dir)
    second = _run(untrained_store, out, "--num_shards=1", "--eval=off")
    _assert_consistent(run_dir)
    names = _output_files(run_dir)
    assert "metrics.json" not in names and not any("of-00003" in n for n in names)
    assert second.metrics is None
    assert second.num_records + second.num_failures == first.num_records + first.num_failures
    assert len(read_rows(str(run_dir), "records")) == second.num_records
    assert "report.html" in {Path(u).name for u in _listed(run_dir)["files"]}


def test_rerun_killed_mid_write_leaves_no_marker_over_mixed_files(untrained_store, tmp_path):
    out = tmp_path / "out"
    _run(untrained_store, out, "--num_shards=2")
    run_dir = out / "night"
    _assert_consistent(run_dir)
    command = [sys.executable, "-m", "pipeline.run"] + _base(untrained_store, out) + [
        "--run_id=night", "--num_shards=4", "--batch_size=1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        new_shards: list[str] = []
        while not new_shards and proc.poll() is None and time.monotonic() < deadline:
            _assert_consistent(run_dir)  # the old marker, while it stands, still describes the folder
            new_shards = [n for n in _output_files(run_dir) if "of-00004" in n]
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # as soon as the rerun has written part of its output
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert new_shards, "the rerun ended before it wrote anything"
    assert not (run_dir / "_SUCCESS.json").exists()  # old and new shards are mixed now: no marker
    _run(untrained_store, out, "--num_shards=4")
    _assert_consistent(run_dir)
    assert sum(1 for n in _output_files(run_dir) if n.startswith("records-")) == 4


def test_relative_paths_resolve_where_the_user_stands(untrained_store, tmp_path):
    """`~/clipsam/run_pipeline.sh --input=scans --output=out --model_store=store` from a data folder."""
    import shutil

    here = tmp_path / "line-7"
    shutil.copytree(MVTEC / "hazelnut", here / "scans" / "hazelnut")
    shutil.copytree(untrained_store, here / "store")
    done = subprocess.run(
        [str(REPO / "run_pipeline.sh"), "--input=scans", "--output=out", "--model_store=store", "--run_id=r",
         "--report=off"],
        cwd=here, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    listed = json.loads((here / "out" / "r" / "_SUCCESS.json").read_text())["files"]
    assert listed and all(str(here / "out" / "r") in url for url in listed)
    assert not (REPO / "out" / "r").exists()
