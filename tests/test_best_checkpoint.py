"""best.pt is chosen among the epochs at the sparsity the run is for, and every accuracy the toolkit
reports goes with the sparsity of its own checkpoint."""

import json

import pytest

from snn_stp.analysis import pareto
from snn_stp.cli import final_line
from snn_stp.analysis.runs import Run, best_record, read_run
from snn_stp.sweeps import point_results
from snn_stp.train import Trainer, evaluate_checkpoint, load_config
from snn_stp.train import checkpoint as ckpt

from conftest import metrics_records, sets, snn_stp

SMALL = ["model.options={hidden: 32}", "data.batch_size=32", "train.analysis_samples=0"]


@pytest.mark.slow
def test_with_a_target_best_pt_is_an_epoch_at_the_target_and_its_sparsity_is_reported(tmp_path):
    """gmp pruning to 90% over 3 epochs (every epoch, as Zhu & Gupta with dt = one epoch): epochs 1
    and 2 are far from 90% and cannot be best.pt, however good their validation accuracy; best.pt
    holds an epoch within a point of 90%, and evaluating it gives the sparsity the summary reports."""
    config = load_config(overrides=SMALL + ["train.epochs=4", "pruning.scheduler=gmp", "pruning.target_sparsity=0.9",
                                            "pruning.end_epoch=2"])
    summary = Trainer(config, tmp_path, quiet=True).fit()
    epochs = metrics_records(tmp_path)
    assert [r["best_eligible"] for r in epochs] == [abs(r["pruned_layer_sparsity"] - 0.9) <= 0.01 for r in epochs]
    assert [r["best_eligible"] for r in epochs] == [False, True, True, True]  # s_f set after 2 epochs
    chosen = max((r for r in epochs if r["best_eligible"]), key=lambda r: r["val_acc"])
    assert summary["best_epoch"] == chosen["epoch"] and summary["best_weight_sparsity"] == chosen["pruned_layer_sparsity"]
    assert summary["best_rule"] == "the epochs within 1 point(s) of the target sparsity 90.00% (pruned layers)"
    best = evaluate_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["epoch"] == chosen["epoch"] and best["pruned_layer_sparsity"] == summary["best_weight_sparsity"]
    assert best["test_acc"] == summary["test_acc_at_best_val"]
    # The same pairing everywhere the run is read back: results.csv, the report, the Pareto outcome.
    row = point_results(tmp_path)
    assert (row["test_acc_at_best_val"], row["best_weight_sparsity"]) == (best["test_acc"], best["pruned_layer_sparsity"])
    assert row["final_test_acc"] == epochs[-1]["test_acc"] and row["pruned_layer_sparsity"] == epochs[-1]["weight_sparsity"]
    outcome = pareto.outcome(read_run(tmp_path))
    assert (outcome.accuracy["best_val"], outcome.sparsity["best_val"]) == (best["test_acc"], best["pruned_layer_sparsity"])
    line = final_line(summary, config, "RUN")
    assert (f"; best.pt: epoch {chosen['epoch']}, the best validation accuracy among the epochs within 1 point(s) of the "
            f"target sparsity 90.00% (pruned layers): test accuracy {best['test_acc']:.2%} at weight sparsity "
            f"{best['pruned_layer_sparsity']:.2%} of the pruned layers;") in line
    assert line.startswith(f"final test accuracy {epochs[-1]['test_acc']:.2%} at weight sparsity "
                           f"{epochs[-1]['weight_sparsity']:.2%} of the pruned layers (target 90.00%)")


@pytest.mark.slow
def test_a_run_that_never_reaches_its_target_has_no_best_pt_and_says_so(tmp_path):
    """LATS asked for 90% with a tolerance of 0.01 points (one weight in 10,000): no epoch lands
    that close, so there is no best.pt, and the final line says which epochs would have been eligible."""
    process = snn_stp("train", "--quiet", "--out", tmp_path / "run", "--set", "pruning.target_sparsity=0.9", "--set",
                      "pruning.target_tolerance=0.0001", "--set", "train.epochs=2", *sets(*SMALL))
    assert process.returncode == 0, process.stderr
    assert ("; no best.pt: no epoch was among the epochs within 0.01 point(s) of the target sparsity 90.00% (pruned "
            "layers);") in process.stdout
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_epoch"] is None and summary["best_weight_sparsity"] is None
    assert point_results(tmp_path / "run")["test_acc_at_best_val"] is None


def test_runs_written_before_the_field_are_read_as_before_with_the_sparsity_unknown(tmp_path):
    """An older run: no best_eligible in its metrics, no best_weight_sparsity in its summary."""
    metrics = [{"epoch": 1, "val_acc": 0.9, "test_acc": 0.91, "weight_sparsity": 0.3},
               {"epoch": 2, "val_acc": 0.8, "test_acc": 0.85, "weight_sparsity": 0.9}]
    assert best_record(metrics) == metrics[0]  # every validated epoch competes, as before
    assert best_record([{**m, "best_eligible": m["epoch"] == 2} for m in metrics])["epoch"] == 2
    (tmp_path / "summary.json").write_text(json.dumps({"final_test_acc": 0.85, "test_acc_at_best_val": 0.91}))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    row = point_results(tmp_path)
    assert row["best_weight_sparsity"] == "unknown" and row["test_acc_at_best_val"] == 0.91
    run = Run(tmp_path, {"model": {"name": "m", "spiking": True}, "data": {"name": "d"},
                         "pruning": {"scheduler": "lats"}}, metrics, {})
    outcome = pareto.outcome(run)  # the best epoch's accuracy at that epoch's sparsity, as before
    assert (outcome.accuracy["best_val"], outcome.sparsity["best_val"]) == (0.91, 0.3)


def test_the_loop_and_the_readers_choose_best_pt_by_one_rule():
    """rundir.improves_best is the rule the training loop applies epoch by epoch; best_record (what
    the report, the Pareto outcome and analysis.runs read back) folds the records through it."""
    from snn_stp import rundir

    metrics = [{"epoch": 1, "val_acc": 0.95, "best_eligible": False},  # best accuracy, wrong sparsity
               {"epoch": 2, "val_acc": None, "best_eligible": True},  # no validation split measured
               {"epoch": 3, "val_acc": 0.8, "best_eligible": True},
               {"epoch": 4, "val_acc": 0.9, "best_eligible": True},
               {"epoch": 5, "val_acc": 0.9, "best_eligible": True}]  # a tie: the earlier epoch stays
    best_acc, chosen = rundir.NO_BEST_ACCURACY, None
    for record in metrics:  # as Trainer._end_epoch does
        if rundir.improves_best(record, best_acc):
            best_acc, chosen = record["val_acc"], record
    assert chosen["epoch"] == 4 and rundir.best_record(metrics) is chosen and best_record is rundir.best_record
    assert rundir.best_record(metrics[:3]) == metrics[2] and rundir.best_record(metrics[:2]) is None
    assert rundir.best_record([]) is None
