"""What the docs claim is backed by the tests they name."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_row_of_the_convergence_table_names_tests_that_exist():
    text = (ROOT / "docs" / "pruning.md").read_text()
    table = text.split("### What converges to what")[1].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) >= 12
    for row in rows:
        references = re.findall(r"`(test_\w+\.py)::(\w+?)(?:\[[^\]]*\])?`", row)
        shorthand = re.findall(r"`\.\.\.(\w+)`", row)
        assert references, f"a row without a test: {row}"
        for file, name in references:
            assert name in _test_names(ROOT / "tests" / file), f"{file}::{name} does not exist"
        for suffix in shorthand:  # "..._with_..." continues the previous reference's prefix
            assert any(n.endswith(suffix) for n in _test_names(ROOT / "tests" / references[-1][0])), suffix


def test_the_validation_table_gives_each_data_set_s_real_split():
    from snn_stp.data import DATASETS, holdout

    text = (ROOT / "docs" / "data.md").read_text()
    table = text.split("## The validation split")[1].split("## Registry")[0]
    rows = re.findall(r"^\| (`[^|]+`) \| ([\d,]+) \| ([\d,]+)", table, flags=re.M)
    covered = set()
    for names, size, held in rows:
        for name in re.findall(r"`(\w+)`", names):
            assert DATASETS[name].train_size == int(size.replace(",", "")), name
            assert len(holdout(DATASETS[name].train_size, 0.1, 0)[1]) == int(held.replace(",", "")), name
            covered.add(name)
    assert covered == set(DATASETS)


def test_the_scheduler_table_is_what_the_classes_declare():
    """docs/pruning.md's table of schedulers is the registry's own (facts declared once, on the class)."""
    from snn_stp.pruning.schedulers import scheduler_table

    text = (ROOT / "docs" / "pruning.md").read_text()
    table = text.split("<!-- scheduler table: generated, do not edit by hand -->\n")[1].split(
        "<!-- end of the scheduler table -->")[0]
    assert table == scheduler_table(), "regenerate it: python -c 'from snn_stp.pruning.schedulers import " \
                                       "scheduler_table; print(scheduler_table())'"
