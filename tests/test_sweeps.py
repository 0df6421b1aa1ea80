"""``snn-stp sweep``: grids from a file or the command line, resumable runs, results.csv; Pareto
figures and tables over many runs."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snn_stp.analysis import pareto
from snn_stp.analysis.report import pairs
from snn_stp.analysis.runs import Run
from snn_stp.errors import ConfigError
from snn_stp.sweeps import plan, points, read_sweep
from snn_stp.train.config import load_config, save_config

from conftest import error_line, write
from conftest import snn_stp as run_cli

TINY = ["model.options={hidden: 16}", "train.epochs=1", "data.batch_size=128", "train.analysis_samples=8"]


# -- grids ------------------------------------------------------------------------------------

def test_a_sweep_file_crosses_its_grid_with_each_variant(tmp_path):
    sweep = read_sweep(write(tmp_path / "s.yaml", """
set: {train.epochs: 3}
grid:
  task:
    snn: {}
    ann: {model.spiking: false}
  train.seed: [0, 1]
variants:
  - {pruning.scheduler: [lats, sine], pruning.target_sparsity: [0.9, 0.95]}
  - {pruning.scheduler: [dense]}
"""))
    found = points(sweep)
    assert len(found) == 2 * 2 * (2 * 2 + 1)
    names = [p.name for p in found]
    assert "task-ann__seed-1__scheduler-sine__target_sparsity-0.95" in names
    assert "task-snn__seed-0__scheduler-dense" in names
    point = found[names.index("task-ann__seed-1__scheduler-sine__target_sparsity-0.95")]
    assert point.overrides == ["train.epochs=3", "model.spiking=false", "train.seed=1", 'pruning.scheduler="sine"',
                               "pruning.target_sparsity=0.95"]
    config = load_config(None, point.overrides)
    assert (config.model.spiking, config.train.seed, config.pruning.scheduler, config.pruning.target_sparsity) == \
        (False, 1, "sine", 0.95)


def test_grid_on_the_command_line_adds_axes_and_names_clash_free(tmp_path):
    sweep = read_sweep(grid=["model.name=spiking_mlp", "data.name=digits", "pruning.target_sparsity=0.9,0.98"],
                       settings=["train.epochs=2"])
    names = [p.name for p in points(sweep)]
    # model.name and data.name share their last part: both keep the whole key.
    assert names == ["model.name-spiking_mlp__data.name-digits__target_sparsity-0.9",
                     "model.name-spiking_mlp__data.name-digits__target_sparsity-0.98"]


@pytest.mark.parametrize("text, message", [
    ("grid: {train.seed: 3}", "sweep axis 'train.seed' must be a non-empty list of values"),
    ("grid: {seed: [1, 2]}", "sweep axis 'seed' is not a config key (section.key)"),
    ("grid: {task: {a: 1}}", "sweep axis 'task': a named axis maps each label to a mapping of settings"),
    ("set: {train.epochs: 2}", "the sweep has no grid"),
    ("grids: {train.seed: [0]}", "unknown key(s) ['grids'] in sweep file"),
    ("variants: [{pruning.scheduler: [lats]}, {pruning.scheduler: [lats]}]", "the sweep has the same point more than"),
])
def test_bad_sweep_files_say_what_is_wrong(tmp_path, text, message):
    path = write(tmp_path / "s.yaml", text)
    with pytest.raises(ConfigError) as error:
        points(read_sweep(path))
    assert message in str(error.value)


def test_every_point_is_checked_before_anything_runs(tmp_path):
    sweep = read_sweep(grid=["pruning.scheduler=lats,str", "pruning.target_sparsity=0.9"])
    with pytest.raises(ConfigError, match="sweep point scheduler-str__target_sparsity-0.9: pruning.target_sparsity: "
                                          "str cannot aim at a sparsity"):
        plan(sweep, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_point_whose_folder_holds_another_config_is_refused(tmp_path):
    sweep = read_sweep(grid=["train.seed=0,1"])
    folder = tmp_path / "out" / "seed-0"
    folder.mkdir(parents=True)
    save_config(load_config(None, ["train.seed=0", "optim.lr=0.05"]), folder / "config.yaml")
    with pytest.raises(Exception, match=r"sweep point seed-0: .* holds a run of another config \(differs in "
                                        r"optim.lr\); the sweep was edited since it ran"):
        plan(sweep, tmp_path / "out")
    save_config(load_config(None, ["train.seed=0"]), folder / "config.yaml")
    assert [state for _, state in plan(sweep, tmp_path / "out")] == ["restart", "start"]


# -- the command, killed and run again ------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("args, expected", [
    (["--out", "OUT"], "OUT holds no sweep (sweep.yaml is missing): give a sweep file with a grid, or --grid "
                       "key=v1,v2"),
    (["--grid", "pruning.scheduler", "--out", "OUT"],
     "--grid 'pruning.scheduler' must look like key=value, e.g. --grid pruning.target_sparsity=0.9,0.95"),
    (["--grid", "pruning.scheduler=lats,dense", "--set", "pruning.target_sparsity=0.9", "--out", "OUT"],
     "sweep point scheduler-dense: pruning.target_sparsity: the dense baseline prunes nothing; choose a pruning "
     "scheduler (snn-stp list)"),
    (["missing.yaml", "--out", "OUT"], "sweep file missing.yaml does not exist; give a YAML file with a grid"),
])
def test_sweep_failures_are_one_line(tmp_path, args, expected):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    message = error_line(run_cli("sweep", *args, cwd=tmp_path), "sweep")
    assert message.startswith(expected.replace("OUT", str(tmp_path / "out"))), message
    assert not (tmp_path / "out").exists()  # nothing started

def start_cli(*args, **options) -> subprocess.Popen:
    """``snn-stp ARGS`` started in the background."""
    return subprocess.Popen([sys.executable, "-m", "snn_stp", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, **options)


@pytest.mark.slow
def test_a_killed_sweep_continues_where_it_stopped(tmp_path):
    out = tmp_path / "sweep"
    sets = [arg for item in TINY for arg in ("--set", item)]
    command = ["sweep", "--grid", "pruning.scheduler=lats,sine", "--grid", "pruning.target_sparsity=0.5,0.8",
               *sets, "--out", out, "--jobs", "1"]
    process = start_cli(*command, start_new_session=True)
    first = out / "scheduler-lats__target_sparsity-0.5" / "summary.json"

    def first_recorded() -> bool:
        """The first point finished and the sweep wrote it down (results.csv follows the point's
        summary.json: a kill in between would leave no results.csv yet)."""
        try:
            rows = list(csv.DictReader(open(out / "results.csv")))
        except FileNotFoundError:
            return False
        return first.is_file() and bool(rows) and rows[0]["status"] == "done"

    deadline = time.monotonic() + 240
    while not first_recorded() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)  # polling for the files, not waiting a fixed time
    assert first_recorded(), process.communicate()
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    stamp = first.stat().st_mtime_ns
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["status"] for r in rows][0] == "done" and {r["status"] for r in rows[1:]} <= {"pending", "done"}

    again = start_cli(*command)
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr
    assert "1 finished already" in stdout or "2 finished already" in stdout
    assert first.stat().st_mtime_ns == stamp  # skipped, not run again
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["status"] for r in rows] == ["done"] * 4
    if "SLURM_JOB_ID" not in os.environ:  # where each point ran (a local worker process)
        assert {(r["launcher"], r["host"], r["slurm_job"]) for r in rows} == {("local", socket.gethostname(), "")}
    for row in rows:
        # sine is re-aimed to the end; lats is calibrated by mid-run and then keeps its lambda (at 50%
        # on this short run it lands several points off: docs/pruning.md).
        miss = abs(float(row["pruned_layer_sparsity"]) - float(row["pruning.target_sparsity"]))
        assert miss <= (0.005 if row["pruning.scheduler"] == "sine" else 0.1), row["name"]
        # best.pt exists only where an epoch landed within a point of the target.
        assert (row["best_epoch"] == "") == (row["test_acc_at_best_val"] == "") == (row["best_weight_sparsity"] == "")
        for column in ("final_test_acc", "all_weight_sparsity", "final_threshold",
                       "l1_coefficient", "mean_firing_rate", "energy_pj_effective", "seconds"):
            assert row[column] != "", column
    # The last point ran in a worker after other points: a fresh process gives the same numbers.
    last = out / "scheduler-sine__target_sparsity-0.8"
    fresh = subprocess.run([sys.executable, "-m", "snn_stp", "train", "--quiet", "--out", tmp_path / "fresh", *sets,
                            "--set", "pruning.scheduler=sine", "--set", "pruning.target_sparsity=0.8"],
                           capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert fresh.returncode == 0, fresh.stderr
    keys = ("test_acc", "val_acc", "train_loss", "threshold", "final_threshold", "weight_sparsity")
    swept = [{k: r[k] for k in keys} for r in map(json.loads, (last / "metrics.jsonl").read_text().splitlines())]
    alone = [{k: r[k] for k in keys} for r in map(json.loads, (tmp_path / "fresh" / "metrics.jsonl").read_text()
                                                  .splitlines())]
    assert swept == alone
    # A third run has nothing left to do.
    done = start_cli(*command)
    stdout, _ = done.communicate(timeout=120)
    assert done.returncode == 0 and "4 finished already, 0 to run" in stdout
    # compare and plot read the sweep folder.
    report = subprocess.run([sys.executable, "-m", "snn_stp", "compare", out, "--out", tmp_path / "report"],
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Accuracy against sparsity" in text and "| lats |" in text and "### digits · spiking_mlp SNN" in text
    figures = subprocess.run([sys.executable, "-m", "snn_stp", "plot", out], capture_output=True, text=True)
    assert figures.returncode == 0, figures.stderr
    assert (out / "plots" / "pareto.png").is_file() and not any(out.glob("*/plots"))  # no per-run figures


TARGETS_SWEEP = """
set: {train.threads: 1, train.analysis_samples: 0}
variants:
  - method:
      lats: {pruning.scheduler: lats}
      slats: {pruning.scheduler: slats}
    pruning.target_sparsity: [0.98, 0.99]
    task: {digits_snn: {}, digits_ann: {model.spiking: false}}
  - method: {sine: {pruning.scheduler: sine}}
    pruning.target_sparsity: [0.9, 0.98]
    task: {digits_snn: {}, digits_ann: {model.spiking: false}}
"""


@pytest.mark.slow
def test_targets_hold_on_the_cpu_tasks(tmp_path):
    """What docs/pruning.md promises, through `snn-stp sweep`: on the digits SNN and its ANN twin,
    lats and slats (calibrated early, then constant) asked for 98 and 99% land within a point;
    sine (re-aimed to the end) within 0.5 points at 90 and 98%. results.csv gives every run's lambda
    (>= 0) and best.pt's own sparsity, within the default tolerance of the target."""
    sweep = write(tmp_path / "targets.yaml", TARGETS_SWEEP)
    process = subprocess.run([sys.executable, "-m", "snn_stp", "sweep", sweep, "--out", tmp_path / "out", "--jobs",
                              "2", "--quiet"], capture_output=True, text=True, timeout=1200)
    assert process.returncode == 0, process.stderr
    rows = list(csv.DictReader(open(tmp_path / "out" / "results.csv")))
    assert len(rows) == 12 and {r["task"] for r in rows} == {"digits_snn", "digits_ann"}
    misses = [(r["name"], r["pruned_layer_sparsity"]) for r in rows
              if abs(float(r["pruned_layer_sparsity"]) - float(r["pruning.target_sparsity"]))
              > (0.005 if r["method"] == "sine" else 0.01)]
    assert not misses
    assert all(float(r["l1_coefficient"]) >= 0 for r in rows)
    for r in rows:
        if r["best_epoch"]:
            assert abs(float(r["best_weight_sparsity"]) - float(r["pruning.target_sparsity"])) <= 0.01


# -- Pareto tables and figures ------------------------------------------------------------------

def outcome(task, scheduler, sparsity, accuracy, seed=0, setting=None):
    return pareto.Outcome(task, scheduler, setting or (scheduler, sparsity), {"final": accuracy, "best_val": accuracy},
                          {"final": sparsity, "best_val": sparsity / 2})


def study():
    snn, ann = "digits · spiking_mlp SNN", "digits · spiking_mlp ANN"
    found = []
    for seed, noise in enumerate((-0.002, 0.0, 0.002)):
        found += [outcome(snn, "lats", 0.9001, 0.97 + noise, seed), outcome(snn, "sine", 0.8999, 0.95 + noise, seed),
                  outcome(snn, "lats", 0.98, 0.96 + noise, seed), outcome(snn, "sine", 0.98, 0.958 + noise, seed),
                  outcome(snn, "dense", 0.0, 0.98 + noise, seed), outcome(ann, "lats", 0.95, 0.9 + noise, seed)]
    found.append(outcome(snn, "gradr", 0.93, 0.9))  # lands between levels: in no column
    found.append(outcome(snn, "gmp", 0.995, 0.5))  # within 0.5 points of 99 and 99.5%: counts for 99.5% only
    return found


def test_the_best_validation_accuracy_goes_with_the_sparsity_of_its_epoch():
    """best.pt can come from an epoch before the pruning finished: its accuracy is placed at that
    epoch's sparsity, never at the final one."""
    text = pareto.markdown_tables(study(), levels=(0.45, 0.49), accuracy="best_val")
    assert "whose that epoch's weight sparsity" in text
    assert "| lats | **97.00 ± 0.20 (3) †** | **96.00 ± 0.20 (3)** |" in text  # 0.9001 / 2 and 0.98 / 2


def test_points_average_the_seeds_of_a_setting():
    lats = [p for p in pareto.points(study()) if p.scheduler == "lats" and p.task.endswith("SNN")]
    assert [(round(p.sparsity, 4), round(p.accuracy, 6), p.seeds) for p in lats] == [(0.9001, 0.97, 3), (0.98, 0.96, 3)]
    assert lats[0].accuracy_std == pytest.approx(0.002)


def test_the_table_marks_the_best_and_whether_its_lead_exceeds_the_spread():
    text = pareto.markdown_tables(study(), levels=(0.9, 0.95, 0.98))
    snn = text.split("### digits · spiking_mlp SNN")[1].split("###")[0]
    assert "Dense baseline: 98.00 ± 0.20 (3)" in snn
    # At 90%: lats leads sine by 2 points with a spread of 0.2 each: a clear lead.
    assert "| lats | **97.00 ± 0.20 (3) †** | – | **96.00 ± 0.20 (3)** |" in snn
    # At 98%: 0.2 points ahead with 0.2 + 0.2 of spread: best, but not separated.
    assert "| sine | 95.00 ± 0.20 (3) | – | 95.80 ± 0.20 (3) |" in snn
    assert "| gradr | – | – | – |" in snn
    assert "| gmp | – | – | – |" in snn
    assert "| gmp | – | – | – | – | **50.00 ± 0.00 (1)** |" in pareto.markdown_tables(study(), (0.9, 0.95, 0.98, 0.99, 0.995))
    assert text.index("spiking_mlp SNN") < text.index("spiking_mlp ANN")  # the SNN before its twin


def test_the_pareto_figure_has_a_panel_per_task_and_one_legend_entry_per_scheduler():
    fig = pareto.pareto_figure(study())
    snn, ann = fig.axes[:2]
    assert snn.get_title().startswith("digits · spiking_mlp SNN") and ann.get_title().startswith("digits · spiking_mlp ANN")
    assert snn.get_xscale() == "logit" and snn.get_xlabel() == "weight sparsity, pruned layers (% zeros; logit axis)"
    assert snn.get_ylabel() == "test error (%, log axis): 100 − test accuracy at the final epoch"
    assert snn.get_yscale() == "log" and snn.get_ylim() == (0.5, 100.0)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["gmp", "gradr", "lats", "sine", "dense (mean ± std)"]
    # The points are seed means: lats at 90% is 3% error (97% accuracy), drawn once for its three seeds.
    lats = [c for c in snn.containers if c.get_label() == "lats"][0]
    x, y = lats.lines[0].get_data()
    assert list(x) == pytest.approx([0.9001, 0.98]) and list(y) == pytest.approx([3.0, 4.0])
    assert snn.get_xlim()[0] > 0.5  # the dense baseline is a band, not a point at 0% that squashes the rest


def run(name, spiking, seed=0, scheduler="lats"):
    config = load_config(None, [f"model.spiking={str(spiking).lower()}", f"train.seed={seed}",
                                f"pruning.scheduler={scheduler}"]).to_dict()
    return Run(Path(name), config, [{"epoch": 1}], {})


def test_compare_pairs_each_snn_with_its_twin_only():
    runs = [run(f"snn{s}", True, s) for s in range(3)] + [run(f"ann{s}", False, s) for s in range(3)] + \
        [run("ann-sine", False, 0, "sine")]
    assert [(s.name, a.name) for s, a in pairs(runs)] == [("snn0", "ann0"), ("snn1", "ann1"), ("snn2", "ann2")]


def test_a_calibrated_run_and_a_hand_set_one_are_different_series():
    """The study's lats (asked for a target) and lats_fixed (hand-set D) rows must not be pooled."""
    def config(**pruning):
        return {"pruning": {"target_sparsity": None, **pruning}}

    assert pareto.method_of(config(scheduler="lats", target_sparsity=0.98)) == "lats"
    assert pareto.method_of(config(scheduler="lats", final_threshold=0.4)) == "lats (hand-set D)"
    assert pareto.method_of(config(scheduler="lats", final_threshold=None, l1=0.003)) == "lats (hand-set l1)"
    assert pareto.method_of(config(scheduler="sine", final_threshold=0.2)) == "sine (hand-set D)"
    for name in ("gmp", "str", "gradr", "dense"):  # no target to calibrate, or one they always take
        assert pareto.method_of(config(scheduler=name, target_sparsity=0.9)) == name
    assert pareto.method_of(config(scheduler="gmp", target_sparsity=0.9)) == "gmp"
    # What a soft threshold prunes together, and its penalty, make another method (issue 23's study).
    assert pareto.method_of(config(scheduler="lats", target_sparsity=0.9, granularity="channel")) == "lats + channel"
    assert pareto.method_of(config(scheduler="lats", target_sparsity=0.9, granularity="nm", nm="2:4")) == "lats + 2:4"
    assert pareto.method_of(config(scheduler="lats", final_threshold=0.4, penalty="energy")) == \
        "lats + energy (hand-set D)"


# -- typed settings: a point's values never go through text -------------------------------------

#: Values that do not survive their command-line text: JSON writes 1e-10 without a dot, which YAML
#: 1.1 reads back as the string "1e-10" (so optim.betas was refused); 0.1 + 0.2 has 17 digits.
TYPED_SWEEP = """
set: {model.options: {hidden: 16}, train.epochs: 1, data.batch_size: 128, train.analysis_samples: 8,
      pruning.target_sparsity: 0.30000000000000004}
grid: {optim.betas: [[0.9, 1.0e-10]]}
"""


def test_a_points_typed_values_reach_its_config_and_its_worker_exactly(tmp_path):
    import pickle

    from snn_stp.sweeps import _job

    with pytest.raises(ConfigError, match=r"optim.betas must be two numbers in \[0, 1\), got \[0.9, '1e-10'\]"):
        load_config(None, ["optim.betas=[0.9, 1e-10]"])  # the same value as text: a string inside the list
    sweep = read_sweep(write(tmp_path / "s.yaml", TYPED_SWEEP))
    [(point, state)] = plan(sweep, tmp_path / "out")
    assert state == "start" and point.name == "betas-_0.9__1e-10_"
    assert point.config.optim.betas == [0.9, 1e-10] and point.config.pruning.target_sparsity == 0.1 + 0.2
    # What the spawned worker gets: the Config itself, pickled (not the command line its log shows).
    job = pickle.loads(pickle.dumps(_job(sweep, point, tmp_path / "out", state)))
    assert job.config == point.config and job.config.pruning.given_keys == point.config.pruning.given_keys
    assert (job.run_dir, job.overwrite) == (str(tmp_path / "out" / point.name), False)
    assert job.command[:4] == ("train", "--quiet", "--out", job.run_dir)
    assert "optim.betas=[0.9, 1e-10]" in job.command  # the log's equivalent command, as before


def test_a_settings_key_that_is_not_a_section_names_its_source(tmp_path):
    sweep = read_sweep(write(tmp_path / "s.yaml", "set: {train.epochs: 2, train.epochs.x: 1}\ngrid: {train.seed: [0]}"))
    with pytest.raises(ConfigError, match=r"^sweep point seed-0: the sweep's setting 'train.epochs.x': 'epochs' is "
                                          r"not a section$"):
        plan(sweep, tmp_path / "out")
    sweep = read_sweep(grid=["train.seed=0"], settings=["train.epochs=2"])
    sweep.grid["task"] = {"a": {"train.seed.x": 1}}
    with pytest.raises(ConfigError, match=r"setting 'train.seed.x' of label 'a' of sweep axis 'task': 'seed' is not"):
        plan(sweep, tmp_path / "out")


@pytest.mark.slow  # a spawned worker trains the point
def test_a_sweep_trains_the_typed_values_of_its_points(tmp_path):
    from snn_stp import cli
    from snn_stp.files import read_yaml

    out = tmp_path / "out"
    assert cli.main(["sweep", str(write(tmp_path / "s.yaml", TYPED_SWEEP)), "--out", str(out), "--quiet"]) == 0
    folder = out / "betas-_0.9__1e-10_"
    saved = read_yaml(folder / "config.yaml")
    assert saved["optim"]["betas"] == [0.9, 1e-10] and saved["pruning"]["target_sparsity"] == 0.1 + 0.2
    assert saved["model"]["options"] == {"hidden": 16}
    log = (out / "logs" / f"{folder.name}.log").read_text().splitlines()
    assert log[0] == (f"$ snn-stp train --quiet --out {folder} --set 'model.options={{\"hidden\": 16}}' --set "
                      "train.epochs=1 --set data.batch_size=128 --set train.analysis_samples=8 --set "
                      "pruning.target_sparsity=0.30000000000000004 --set 'optim.betas=[0.9, 1e-10]'")
    assert [row["status"] for row in csv.DictReader(open(out / "results.csv"))] == ["done"]
    assert [state for _, state in plan(read_sweep(tmp_path / "s.yaml"), out)] == ["done"]  # the same config
