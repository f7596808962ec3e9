"""Every table the commands print reads at 80 columns and in a pipe: no registered name is split.

``fm plugins | grep -w midpoint`` must find midpoint's row; a name broken over two lines
("midpoin" / "t") would not be found, and a figure broken in two would misread.
"""

import re

import pytest
from helpers import fm_ok as fm

from fmcli import registry


@pytest.fixture(params=[80, 120])
def width(request, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(request.param))  # rich reads it when output is not a terminal
    return request.param


def test_fm_plugins_has_one_unbroken_row_per_registered_item(width):
    output = fm("plugins")
    lines = output.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= width
    tables = {
        "solver": registry.solvers(),
        "data set": registry.datasets(),
        "model": registry.models(),
        "extractor": registry.feature_extractors(),
    }
    for kind, table in tables.items():
        for name in table:
            # As `grep -w name`: a whole-word match on one line, the row that starts with its kind.
            rows = [line for line in lines if re.match(rf"\s*{kind}\s+{re.escape(name)}\s", line)]
            assert rows, f"{kind} {name!r} has no unbroken row:\n{output}"


def test_fm_info_keys_are_never_split(tiny_checkpoint, width):
    output = fm("info", tiny_checkpoint)
    for key in ("train.checkpoint_every", "model.attention_resolutions", "data.normalisation"):
        assert key in output, output
    assert max(len(line.rstrip()) for line in output.splitlines()) <= width


def test_descriptions_are_text_not_markup(width):
    assert "pip install 'fmcli[inception]'" in " ".join(fm("plugins").split())


def test_eval_sweep_table_keeps_solver_names_whole(toy_checkpoint, tmp_path, width):
    output = fm(
        "eval",
        toy_checkpoint,
        "--sweep",
        "euler,midpoint,adaptive_heun",
        "--steps",
        "1",
        "--rtols",
        "0.5",
        "--num",
        "16",
        "--metrics",
        "kid",
        "--kid-subsets",
        "2",
        "--out",
        tmp_path,
    )
    for name in ("euler", "midpoint", "adaptive_heun"):
        assert re.search(rf"^\W*{name}\s", output, re.M), output
