"""The run directory's files: atomic writes with the umask's mode, torn-line-tolerant readers,
truncation on resume, YAML that rejects duplicate keys, the resume config comparison."""

import json
import os
from pathlib import Path

import pytest

from conftest import write
from snn_stp import rundir
from snn_stp.errors import ConfigError, RunDirectoryError
from snn_stp.files import parse_value, read_yaml, remove_temporaries, write_text_atomic
from snn_stp.train.config import RESUME_MUTABLE_KEYS, differences, load_config


def write_records(run, records, tail=""):
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_a_torn_last_line_is_skipped_with_a_warning_naming_the_file(tmp_path):
    write_records(tmp_path, [{"epoch": 1, "step": 10}, {"epoch": 2, "step": 20}], tail='{"epoch": 3, "st')
    with pytest.warns(rundir.RunFileWarning, match=f"{tmp_path}/metrics.jsonl: skipped a torn last line \\(line 3"):
        assert [r["epoch"] for r in rundir.read_metrics(tmp_path)] == [1, 2]


def test_a_damaged_line_elsewhere_is_an_error_naming_file_and_line(tmp_path):
    write_records(tmp_path, [{"epoch": 1, "step": 10}])
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2\n{"epoch": 3, "step": 30}\n')
    with pytest.raises(RunDirectoryError, match=f"{tmp_path}/metrics.jsonl line 2 is not a metrics record"):
        rundir.read_metrics(tmp_path)


def test_resume_truncation_drops_records_after_the_checkpoint_and_the_torn_line(tmp_path):
    write_records(tmp_path, [{"epoch": e, "step": 10 * e} for e in (1, 2, 3)], tail='{"epo')
    assert rundir.truncate_metrics(tmp_path, 20) == 2
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1, "step": 10}\n{"epoch": 2, "step": 20}\n'
    assert rundir.truncate_metrics(tmp_path, 20) == 0


def test_a_truncated_summary_is_ignored_with_a_warning(tmp_path):
    (tmp_path / "summary.json").write_text('{"final_test_acc": 0.9')
    with pytest.warns(rundir.RunFileWarning, match="summary.json is truncated or damaged"):
        assert rundir.read_summary(tmp_path) == {}


def test_atomic_files_take_the_umask_mode_and_leave_no_temporary(tmp_path):
    old = os.umask(0o027)
    try:
        write_text_atomic(tmp_path / "config.yaml", "a: 1\n")
    finally:
        os.umask(old)
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]
    litter = tmp_path / ".last.pt.1a2b3c4d.tmp"
    litter.write_bytes(b"x" * 10)
    (tmp_path / ".mine.tmp").write_text("not ours")
    assert remove_temporaries(tmp_path, rundir.ATOMIC_FILES) == [litter]
    assert (tmp_path / ".mine.tmp").exists()


def test_a_run_directory_is_refused_unless_overwrite(tmp_path):
    rundir.prepare_new(tmp_path / "new", overwrite=False)  # a new folder is fine
    (tmp_path / "new" / "notes.txt").write_text("")
    rundir.prepare_new(tmp_path / "new", overwrite=False)  # a folder without a run too
    (tmp_path / "new" / "config.yaml").write_text("")
    with pytest.raises(RunDirectoryError, match="already holds a run .* pass --overwrite to replace it"):
        rundir.prepare_new(tmp_path / "new", overwrite=False)
    rundir.prepare_new(tmp_path / "new", overwrite=True)
    rundir.clear(tmp_path / "new")
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["notes.txt"]


def test_yaml_syntax_errors_and_duplicate_keys_name_the_file_and_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=f"{path}: key 'lr' appears twice in one mapping \\(lines 2 and 3\\)"):
        read_yaml(path)
    path.write_text("optim: {lr: 0.1\n")
    with pytest.raises(ConfigError, match=f"{path} line 2, column 1: YAML syntax error"):
        load_config(path)


@pytest.mark.parametrize("text", ["2:4", "1:30.5", "3:04:05"])
def test_base_60_numbers_stay_strings_every_other_number_reads_as_pyyaml_reads_it(text, tmp_path):
    import yaml

    # YAML 1.1 (PyYAML) reads 2:4 as the base-60 integer 124: an N:M pattern or a Slurm time limit
    # would arrive as a number, in any key, from a file or from --set.
    assert yaml.safe_load(text) != text
    assert parse_value(text, "--set x") == text
    assert read_yaml(write(tmp_path / "c.yaml", f"pruning: {{nm: {text}}}\n")) == {"pruning": {"nm": text}}
    for other in ["124", "0x1f", "017", "0b101", "1_000", "+3", "1.5", "1.0e-3", "-1.5e+3", ".inf", "true", "null",
                  "2026-12-06", "a:b"]:
        assert parse_value(other, "--set x") == yaml.safe_load(other), other


def test_config_differences_and_the_keys_resume_accepts():
    saved = load_config(overrides=["train.epochs=3"])
    edited = load_config(overrides=["train.epochs=30", "data.workers=2", "model.options={hidden: 8}"])
    assert differences(saved, edited) == {"data.workers": (0, 2), "model.options": ({}, {"hidden": 8}),
                                          "train.epochs": (3, 30)}
    assert "data.workers" in RESUME_MUTABLE_KEYS and "train.epochs" not in RESUME_MUTABLE_KEYS


def test_runs_and_data_roots_follow_their_environment_variables(monkeypatch, tmp_path):
    from snn_stp.data import DATA_ROOT_VARIABLE, default_root

    monkeypatch.delenv(rundir.RUNS_VARIABLE, raising=False)
    monkeypatch.delenv(DATA_ROOT_VARIABLE, raising=False)
    assert rundir.runs_root() == Path("runs") and default_root() == Path("datasets")
    monkeypatch.setenv(rundir.RUNS_VARIABLE, str(tmp_path / "r"))
    monkeypatch.setenv(DATA_ROOT_VARIABLE, str(tmp_path / "d"))
    assert rundir.runs_root() == tmp_path / "r" and default_root() == tmp_path / "d"
