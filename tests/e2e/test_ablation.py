"""Ablations end to end through ``python -m flare_ray.tune`` on a local Ray and a real MLflow store: every
method of the paper as a grid cell, grids x seeds (each cell once per seed), selection on the mean over
seeds, languages at once, self-describing child runs and per-example predictions that reproduce the
logged test metric exactly. Slow (a few minutes); CI runs them.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from mlflow.artifacts import download_artifacts

from flare_ray.experiment import SCHEMA_VERSION
from flare_ray.tasks import TaskConfig, get_task
from flare_ray.tasks.predictions import score_frame
from tests.helpers import chromium
from tests.sweeps import mlflow_runs, run_tune

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TINY = [
    "task.max_records={train: 32, validation: 24, test: 24}",
    "training.epochs=1",
    "search.scheduler=null",
    "search.space={}",
    "search.max_concurrent_trials=2",
    "search.num_samples=1",
]
METHODS = ["zero_shot", "translate_test", "lora", "input_fusion", "xmixup", "flare", "flare_mt"]


def predictions(client, run, split: str, storage) -> pd.DataFrame:
    path = download_artifacts(
        run_id=run.info.run_id,
        artifact_path=f"predictions/{split}.parquet",
        tracking_uri=f"sqlite:///{storage / 'mlflow.db'}",
        dst_path=str(storage / "downloads" / run.info.run_id),
    )
    return pd.read_parquet(path)


def test_every_method_of_the_paper_runs_as_a_grid_cell(tmp_path):
    run_tune(
        tmp_path,
        *TINY,
        f"search.grid={{method.kind: {json.dumps(METHODS)}}}",
        "model.stage1=auto",
        "method.flare.mt_encoder=tiny:m2m_100",
        "method.xmixup.layer=1",
    )
    client, (parent,), children = mlflow_runs(tmp_path)
    assert sorted(c.data.tags["flare_ray.method"] for c in children) == sorted(METHODS)  # each method once
    task = get_task(TaskConfig(name="nusax", language="jav"))
    for child in children:
        kind = child.data.tags["flare_ray.method"]
        assert child.info.status == "FINISHED", kind
        assert json.loads(child.data.tags["flare_ray.cell"]) == {"method.kind": kind}
        assert child.data.tags["flare_ray.schema_version"] == str(SCHEMA_VERSION)
        params = child.data.params  # the whole resolved config, not only the grid key
        assert params["method.kind"] == kind and params["training.batch_size"] == "16" and params["model.stage1"]
        trained = client.get_metric_history(child.info.run_id, "train/loss")
        assert len(trained) == (0 if kind in ("zero_shot", "translate_test") else 1), kind
        # The per-example predictions reproduce the logged test metric exactly, and name their examples.
        frame = predictions(client, child, "test", tmp_path)
        assert set(frame["split"]) == {"test"} and set(frame["language"]) == {"jav"} and frame["id"].is_unique
        scores = score_frame(task, frame)
        assert scores["macro_f1"] == child.data.metrics["test/macro_f1"], kind
        assert scores["accuracy"] == pytest.approx(100 * frame["correct"].mean())
        assert len(predictions(client, child, "validation", tmp_path)) == 24
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "adapter")}
        assert ("adapter/adapter_config.json" in artifacts) == (kind not in ("zero_shot", "translate_test")), kind
    assert parent.data.tags["flare_ray.schema_version"] == str(SCHEMA_VERSION)
    assert json.loads(parent.data.tags["best.jav.hyperparameters"])["method.kind"] in METHODS


GRID = {"method.flare.fusion": ["add", "mul"], "training.learning_rate": [1.0e-4, 3.0e-2]}


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory):
    """A 2 x 2 grid x 2 seeds sweep through the CLI; its storage folder and what it printed."""
    storage = tmp_path_factory.mktemp("grid")
    done = run_tune(
        storage,
        *TINY,
        f"search.grid={json.dumps(GRID)}",
        "search.seeds=[0, 1]",
        "training.epochs=2",
        "search.metric=validation/loss",
        "search.mode=min",
    )  # the loss tells tiny random models apart
    return storage, done.stdout


def test_a_grid_with_seeds_runs_every_cell_once_per_seed_and_selects_on_the_seed_mean(grid_sweep):
    tmp_path, _ = grid_sweep
    grid = GRID
    client, (parent,), children = mlflow_runs(tmp_path)
    cells = [(json.loads(c.data.tags["flare_ray.cell"]), int(c.data.tags["flare_ray.seed"])) for c in children]
    expected = [
        ({"method.flare.fusion": f, "training.learning_rate": lr}, s)
        for f, lr, s in itertools.product(*grid.values(), [0, 1])
    ]
    assert len(children) == 8 and sorted(map(str, cells)) == sorted(map(str, expected))  # each (cell, seed) once
    for child, (cell, seed) in zip(children, cells):
        assert child.data.params["training.seed"] == str(seed)
        assert float(child.data.params["training.learning_rate"]) == cell["training.learning_rate"]

    # Selection: the configuration with the best mean over its seeds of the best-epoch validation score.
    best_of = {
        c.info.run_id: min(m.value for m in client.get_metric_history(c.info.run_id, "validation/loss"))
        for c in children
    }
    by_configuration: dict[str, list] = {}
    for child in children:
        by_configuration.setdefault(child.data.tags["flare_ray.configuration"], []).append(child)
    stats = {
        k: (
            pd.Series([best_of[c.info.run_id] for c in runs]).mean(),
            pd.Series([best_of[c.info.run_id] for c in runs]).std(),
        )
        for k, runs in by_configuration.items()
    }
    chosen, second = sorted(stats, key=lambda k: stats[k])[:2]  # the lowest mean loss (then the lower std)
    assert stats[chosen] != stats[second]  # a real choice, not a tie
    assert json.loads(parent.data.tags["best.jav.hyperparameters"]) == json.loads(chosen)
    assert parent.data.metrics["best.jav.validation"] == pytest.approx(stats[chosen][0])
    assert json.loads(parent.data.tags["best.jav.seeds"]) == [0, 1]
    best_seed = min(by_configuration[chosen], key=lambda c: best_of[c.info.run_id])
    (version,) = client.search_model_versions("name='quickstart-nusax-jav'")
    assert version.run_id == best_seed.info.run_id  # the registered adapter is its best-validation seed
    assert "over 2 seed(s)" in version.description and "best-validation seed" in version.description


def trial_intervals(storage, search: str) -> list[tuple[float, float]]:
    """(start, end) of every trial of a search, from Tune's result files."""
    out = []
    for path in (storage / search).glob("run_trial_*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out.append((rows[0]["timestamp"] - rows[0]["time_this_iter_s"], rows[-1]["timestamp"]))
    return out


def test_two_languages_search_at_the_same_time(tmp_path):
    run_tune(
        tmp_path,
        "task.languages=[jav, sun]",
        "search.num_samples=1",
        "training.epochs=2",
        "search.scheduler=null",
        "task.max_records={train: 32, validation: 24, test: 24}",
    )
    jav, sun = trial_intervals(tmp_path, "quickstart-jav"), trial_intervals(tmp_path, "quickstart-sun")
    assert len(jav) == len(sun) == 1
    (a_start, a_end), (b_start, b_end) = jav[0], sun[0]
    assert a_start < b_end and b_start < a_end, (jav, sun)  # their trials ran at the same time
    _, (parent,), children = mlflow_runs(tmp_path)
    assert sorted(c.data.tags["flare_ray.language"] for c in children) == ["jav", "sun"]
    for language in ("jav", "sun"):  # each selected on its own
        (child,) = [c for c in children if c.data.tags["flare_ray.language"] == language]
        assert parent.data.tags[f"best.{language}.run_id"] == child.info.run_id


class Cells(HTMLParser):
    """The text of every cell of the report's HTML table, row by row."""

    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(self._cell.strip())
            self._cell = None


def report_files(client, parent, storage) -> Path:
    folder = storage / "downloads" / "report"
    download_artifacts(
        run_id=parent.info.run_id,
        artifact_path="report",
        tracking_uri=f"sqlite:///{storage / 'mlflow.db'}",
        dst_path=str(folder),
    )
    return folder / "report"


def test_the_report_of_a_grid_sweep_is_its_mlflow_records(grid_sweep):
    storage, printed = grid_sweep
    client, (parent,), children = mlflow_runs(storage)
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs table
    folder = report_files(client, parent, storage)
    names = {p.name for p in folder.iterdir()}
    assert {"report.md", "report.csv", "report.html", "report.tex", "bars.png", "curves.png"} <= names
    assert "grid-quickstart.png" in names  # a grid: every trial's validation against its test score, per cell
    assert (
        "`report/`" in parent.data.tags["mlflow.note.content"]
        and "report.html" in parent.data.tags["mlflow.note.content"]
    )

    # Each cell: the mean ± std over its two seeds of the test metric the child runs logged.
    table = pd.read_csv(folder / "report.csv")
    cells = table[table["column"] == "jav"]
    assert len(cells) == 4 and set(cells["n"]) == {2}
    for line in cells.itertuples():
        runs = [c for c in children if c.info.run_id in json.loads(line.run_ids)]
        assert len(runs) == 2 and {json.loads(c.data.tags["flare_ray.cell"])["method.flare.fusion"] for c in runs} == {
            f"{line.row}".split(",")[0].split("=")[1]
        }
        values = pd.Series([c.data.metrics["test/macro_f1"] for c in runs])
        assert line.mean == pytest.approx(values.mean()) and line.std == pytest.approx(values.std())
    best = cells[cells["best"]]
    assert (best["mean"] == cells["mean"].max()).all() and cells[~cells["best"]]["p_value"].between(0, 1).all()
    assert (cells[~cells["best"]]["p_holm"] >= cells[~cells["best"]]["p_value"]).all()  # Holm-corrected
    for line in cells.itertuples():  # each seed's score, in the order of its seeds
        runs = {c.info.run_id: c for c in children}
        assert json.loads(line.scores) == [runs[r].data.metrics["test/macro_f1"] for r in json.loads(line.run_ids)]

    # The HTML shows the numbers of the CSV; the Markdown table was printed at the end of the sweep.
    parser = Cells()
    parser.feed((folder / "report.html").read_text())
    header, *rows = parser.rows
    assert header == ["row", "jav ‡", "jav p", "hyperparameters"]  # tiny model, 32 records: not the paper's setting
    shown = {r[0]: r[1:] for r in rows}
    for line in cells.itertuples():
        assert shown[line.row][0].startswith(f"{line.mean:.2f} ± {line.std:.2f} (n=2)")
        assert shown[line.row][1] == (
            "best" if line.best else f"{line.p_holm:.3f}" + ("*" if line.p_holm < 0.05 else "")
        )
        assert shown[line.row][2] == line.hyperparameters and line.hyperparameters.startswith("r=")  # lr: in the row
    assert "Holm-corrected over the 3 comparisons of each column" in (folder / "report.html").read_text()
    tex = (folder / "report.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and f"{best['mean'].iloc[0]:.2f}" in tex
    assert (folder / "report.md").read_text().split("\n\n")[2] in printed
    for png in ("bars.png", "curves.png"):
        image = plt.imread(folder / png)
        assert image.shape[0] > 100 and image.std() > 0.01, png

    # The registered adapter's model version carries its report row.
    (version,) = client.search_model_versions("name='quickstart-nusax-jav'")
    own = table[table["run_ids"].str.contains(version.run_id)].iloc[0]
    assert f"Report row {own['row']!r}, jav: {own['mean']:.2f}" in version.description

    # A later process, from MLflow alone, makes the same report.
    again = storage / "again"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flare_ray.report",
            "quickstart",
            "--tracking-uri",
            f"sqlite:///{storage / 'mlflow.db'}",
            "--output",
            str(again),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=storage,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(again / "report.csv"), table)
    assert "jav p" in done.stdout and "Failed to load" not in done.stdout


@pytest.mark.browser
def test_the_html_report_renders_in_a_headless_browser(grid_sweep):
    """Debian's Chromium (installed by .ci/run) opens the page: the table is there and every image decoded."""
    storage, _ = grid_sweep
    client, (parent,), _ = mlflow_runs(storage)
    page = report_files(client, parent, storage) / "report.html"
    with chromium(storage / "chromium", size="1280,1600") as driver:
        driver.get(page.as_uri())
        cells = driver.execute_script("return [...document.querySelectorAll('#report td')].map(td => td.innerText)")
        assert len(cells) == 4 * 4 and "best" in cells and any(c.startswith("fusion=add") for c in cells)  # row, jav,
        # p, hyperparameters
        widths = driver.execute_script("return [...document.images].map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) >= 3 and min(widths) > 0, widths  # bars, curves, the grid's trials
        captions = driver.execute_script(
            "return [...document.querySelectorAll('figure')].map(f => [f.querySelector('img').alt,"
            " f.querySelector('figcaption').innerText])"
        )
        said = dict(captions)
        assert "each dot one seed's score" in said["bars.png"] and "train/loss" in said["curves.png"]
        assert "one colour per grid cell" in said["grid-quickstart.png"]
        footnote = driver.execute_script("return [...document.querySelectorAll('.note li')].map(li => li.innerText)")
        assert "model: tiny:xlm-roberta, a tiny randomly initialised model" in footnote  # the ‡ list
        shot = storage / "screenshot.png"
        driver.save_screenshot(str(shot))
    image = plt.imread(shot)
    assert image.shape[1] >= 1000 and image.std() > 0.05  # not a blank page


@pytest.mark.browser
def test_the_sweeps_runs_are_named_and_its_printed_url_opens_them_sorted_in_mlflow(grid_sweep, tmp_path):
    """Each child run is named by what its trial varies, as the console says it, and carries the selection's
    own value; the runs-table URL the sweep printed opens them in MLflow's UI on a fresh browser profile, best
    first (tests/e2e/test_mlflow_ui.py)."""
    from tests.e2e.test_mlflow_ui import check_printed_url

    storage, stdout = grid_sweep
    client, (parent,), children = mlflow_runs(storage)
    best = {}
    for child in children:
        cell, seed = json.loads(child.data.tags["flare_ray.cell"]), child.data.tags["flare_ray.seed"]
        words = f"fusion={cell['method.flare.fusion']} learning_rate={cell['training.learning_rate']:.3g} seed={seed}"
        assert child.info.run_name == f"jav {words}"
        assert words in child.data.tags["mlflow.note.content"]
        history = client.get_metric_history(child.info.run_id, "validation/loss")
        value = child.data.metrics["best/validation/loss"]
        assert value == min(m.value for m in history)  # the selection's own value (mode min), not the last epoch's
        assert child.data.metrics["best/epoch"] == min(m.step for m in history if m.value == value)
        best[child.info.run_name] = value
    check_printed_url(stdout, storage / "mlflow.db", tmp_path, parent.info.run_name, best, "validation/loss", "min")
