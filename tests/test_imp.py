"""Iterative magnitude pruning with rewinding (the lottery-ticket baseline): each round prunes the
smallest remaining weights to 1 - (1 - s)^(r/R), the model and the learning-rate schedule go back to
the rewind epoch, and a run stopped anywhere (at a round's end, inside a round) resumes exactly."""

import pytest
import torch
from torch import nn

import snn_stp
from snn_stp.train import Trainer, load_config
from snn_stp.train import checkpoint as ckpt

from conftest import error_line, metrics_records, sets
from conftest import snn_stp as snn_stp_command


def masked_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 5))
    snn_stp.sparsify(model, rule="magnitude")
    return model


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_each_round_prunes_the_smallest_remaining_weights_to_its_sparsity(scope):
    model = masked_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = snn_stp.build_threshold_scheduler("imp", model, optimizer, target_sparsity=0.875, rounds=3, rewind_epoch=1,
                                              scope=scope, steps_per_epoch=4, total_steps=12)
    # Round 0: 3 epochs of 4 steps; rounds 1-3 start at steps 12, 20, 28 (3 - 1 epochs each).
    assert [sched.round_start(r) for r in range(4)] == [0, 12, 20, 28] and sched.pruning_end_step == 28
    assert type(sched).run_epochs(3, {"rounds": 3, "rewind_epoch": 1}) == 9
    layers = snn_stp.pruned_layers(model, snn_stp.MagnitudeMask)
    g = torch.Generator().manual_seed(1)
    started, before = [], None
    for step in range(36):
        if step % 4 == 0:
            weights = [layer.weight.detach().clone() for layer in layers]
            kept = [layer.parametrization.mask.clone() for layer in layers]
            if sched.begin_round():
                started.append(step)
                sparsity = 1 - 0.5 ** sched.round  # 1 - (1 - 0.875)^(r/3)
                masks = [layer.parametrization.mask for layer in layers]
                # Only weights kept before are pruned now (the masks nest) ...
                assert all(not (m & ~k).any() for m, k in zip(masks, kept))
                # ... exactly round(s_r n) of the n ranked together are zero ...
                groups = [list(range(len(layers)))] if scope == "global" else [[i] for i in range(len(layers))]
                for group in groups:
                    n = sum(masks[i].numel() for i in group)
                    assert sum(int((~masks[i]).sum()) for i in group) == round(sparsity * n)
                    # ... and every pruned weight was at most every kept one in |w|.
                    newly = torch.cat([weights[i][kept[i] & ~masks[i]].abs() for i in group])
                    still = torch.cat([weights[i][masks[i]].abs() for i in group])
                    assert float(newly.max()) <= float(still.min())
                assert sched.sparsity_target == pytest.approx(sparsity)
                assert not sched.begin_round()  # once per round
        with torch.no_grad():  # "training": every parameter moves, masked weights stay zero in w
            for p in model.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        optimizer.step()
        sched.step()
        before = sched.round
    assert started == [12, 20, 28] and before == 3
    state = sched.state_dict()
    again = snn_stp.build_threshold_scheduler("imp", model, optimizer, target_sparsity=0.875, rounds=3, rewind_epoch=1,
                                              scope=scope, steps_per_epoch=4, total_steps=12)
    again.load_state_dict(state)
    assert again.round == 3 and again.last_step == 36 and not again.begin_round()


def test_bad_settings_are_named():
    model = masked_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    build = lambda **kw: snn_stp.build_threshold_scheduler("imp", model, optimizer, **{  # noqa: E731
        "target_sparsity": 0.9, "rounds": 2, "steps_per_epoch": 4, "total_steps": 12, **kw})
    with pytest.raises(ValueError, match=r"imp rewinds to epoch 3, which must come before the end of a round \(3 epochs"):
        build(rewind_epoch=3)
    with pytest.raises(ValueError, match="imp scope 'net' is unknown; valid: global, layer"):
        build(scope="net")
    with pytest.raises(ValueError, match=r"imp needs rounds \(pruning rounds after the dense one\) to be an integer >= 1, "
                                         "got 0"):
        build(rounds=0)
    with pytest.raises(ValueError, match=r"imp needs rewind_epoch \(epochs of round 0\) to be an integer >= 0, got -1"):
        build(rewind_epoch=-1)


@pytest.mark.slow  # child interpreters
@pytest.mark.parametrize("settings, message", [
    (["pruning.scheduler=imp", "pruning.target_sparsity=0.9"], "pruning.scheduler imp needs pruning.rounds"),
    (["pruning.scheduler=imp", "pruning.target_sparsity=0.9", "pruning.rounds=2", "pruning.rewind_epoch=20"],
     "pruning: imp rewinds to epoch 20, which must come before the end of a round (20 epochs, train.epochs)")])
def test_bad_imp_settings_are_one_line_through_the_cli(settings, message, tmp_path):
    process = snn_stp_command("train", *sets(*settings), "--out", tmp_path / "run", "--dry-run")
    assert error_line(process, "train") == message


# Round 0: 3 epochs; rounds 1 and 2: 2 epochs each (rewound to epoch 1): 7 epochs of 21 steps.
IMP = ["model.options={hidden: 32}", "data.batch_size=64", "train.epochs=3", "train.analysis_samples=0",
       "pruning.scheduler=imp", "pruning.target_sparsity=0.75", "pruning.rounds=2", "pruning.rewind_epoch=1",
       "optim.lr=0.05"]
PER_EPOCH = 21


@pytest.fixture(scope="module")
def imp_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("imp") / "run"
    trainer = Trainer(load_config(overrides=IMP), run, quiet=True)
    summary = trainer.fit()
    return run, trainer, summary


def test_one_run_holds_every_round_in_its_metrics(imp_run):
    run, trainer, summary = imp_run
    records = metrics_records(run)
    assert summary["epochs"] == 7 and [r["epoch"] for r in records] == list(range(1, 8))
    assert [r["round"] for r in records] == [0, 0, 0, 1, 1, 2, 2]
    assert [r["pruned_layer_sparsity"] for r in records] == pytest.approx([0, 0, 0, 0.5, 0.5, 0.75, 0.75], abs=1e-3)
    # The learning-rate schedule restarts at the rewind epoch: a round's epochs have round 0's rates from epoch 2 on.
    lr = [r["lr"] for r in records]
    assert lr[3:5] == lr[1:3] and lr[5:7] == lr[1:3] and lr[1] != lr[2]
    # best.pt is chosen in the last round only (the target sparsity's).
    assert summary["best_epoch"] in (6, 7) and summary["best_weight_sparsity"] == pytest.approx(0.75, abs=1e-3)
    assert records[3]["pruned"] > 0 and records[4]["pruned"] == 0


def test_a_round_starts_from_the_rewind_epoch_s_weights_under_its_masks(imp_run, tmp_path):
    run, trainer, _ = imp_run
    # The state after epoch 1 of an identical run, stopped there: what the run kept to rewind to.
    early = Trainer(load_config(overrides=IMP + [f"train.max_steps={PER_EPOCH}"]), tmp_path / "early", quiet=True)
    early.fit()
    kept, reached = trainer.rewind_state["model"], early.model.state_dict()
    assert kept.keys() == reached.keys() and all(torch.equal(kept[k], reached[k]) for k in kept)
    # The same run stopped at the end of round 0, continued: its first act is round 1's pruning and rewind.
    ended = Trainer(load_config(overrides=IMP + [f"train.max_steps={3 * PER_EPOCH}"]), tmp_path / "ended", quiet=True)
    ended.fit()
    resumed = Trainer(load_config(overrides=IMP), tmp_path / "ended", quiet=True,
                      state=ckpt.load(tmp_path / "ended" / "checkpoints" / "last.pt"))
    assert resumed.optimizer.state  # momentum of round 0
    resumed._begin_round()
    now = resumed.model.state_dict()
    masks = {name: value for name, value in now.items() if name.endswith(".mask")}
    assert masks and sum(int((~m).sum()) for m in masks.values()) == \
        pytest.approx(0.5 * sum(m.numel() for m in masks.values()), abs=1)
    # Every parameter and buffer but the masks is epoch 1's; the masks are round 1's, not epoch 1's (all ones).
    assert all(torch.equal(now[k], reached[k]) for k in now if k not in masks)
    assert not resumed.optimizer.state  # momentum starts again
    assert resumed.optimizer.param_groups[0]["lr"] == early.optimizer.param_groups[0]["lr"]
    assert resumed.lr_scheduler.state_dict() == early.lr_scheduler.state_dict()


@pytest.mark.slow  # three more runs
@pytest.mark.parametrize("stop", [3 * PER_EPOCH, 3 * PER_EPOCH + 5, PER_EPOCH - 4], ids=["round-end", "inside-round-1",
                                                                                          "before-rewind-epoch"])
def test_a_run_stopped_anywhere_resumes_exactly_across_rounds(imp_run, stop, tmp_path):
    run, trainer, summary = imp_run
    stopped = Trainer(load_config(overrides=IMP + [f"train.max_steps={stop}"]), tmp_path / "run", quiet=True)
    stopped.fit()
    assert stopped.global_step == stop
    state = ckpt.load(tmp_path / "run" / "checkpoints" / "last.pt")
    resumed = Trainer(load_config(overrides=IMP), tmp_path / "run", state=state, quiet=True)
    again = resumed.fit()
    a, b = trainer.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    first, second = metrics_records(run), metrics_records(tmp_path / "run")
    assert [(r["epoch"], r["round"], r["test_acc"], r["lr"]) for r in first] == \
        [(r["epoch"], r["round"], r["test_acc"], r["lr"]) for r in second]
    assert again["final_test_acc"] == summary["final_test_acc"]


def test_the_sparsity_figure_marks_where_each_round_starts(imp_run):
    from snn_stp.analysis.plots import plot_sparsity
    from snn_stp.analysis.runs import read_run

    figure = plot_sparsity(read_run(imp_run[0]))
    marks = [line.get_xdata()[0] for line in figure.axes[0].lines if line.get_linestyle() == "--"
             and line.get_xdata()[0] == line.get_xdata()[1]]
    assert marks == [3.5, 5.5]  # rounds 1 and 2 start with epochs 4 and 6
