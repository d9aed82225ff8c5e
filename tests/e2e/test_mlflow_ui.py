"""MLflow 3.17's UI in headless Chromium, on a fresh profile, as a new user meets it (``make mlflow``: ``mlflow ui
--app-name flare-ray`` on a sweep's store): a click from the experiment list opens the runs table (flare-ray's
app, :mod:`flare_ray.tracking.ui`, makes the machine-learning pages the browser's default; a plain ``mlflow ui``
opens MLflow's GenAI pages, whatever the experiment's tags say: :mod:`flare_ray.tracking.urls`), and the URL the
sweep prints opens the runs table, the sweep's runs sorted by the selection's value with its columns.

:func:`check_printed_url` is reused on a real sweep's records (``test_ablation.py``'s grid sweep); the tests here
build their records with the sweep's own tracking code on a sqlite store (no Ray)."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
from mlflow.tracking import MlflowClient

from flare_ray.tracking import mlflow_runs
from flare_ray.tracking.callback import MLflowTrialCallback
from flare_ray.tracking.urls import LOCAL_UI
from tests.helpers import chromium, free_port, served

pytestmark = [pytest.mark.browser]


@contextlib.contextmanager
def mlflow_ui(store: Path, log: Path, app: str | None = "flare-ray") -> Iterator[str]:
    """``mlflow ui`` as ``make mlflow`` starts it (with flare-ray's app; ``app=None``: MLflow's plain UI) on the
    sqlite store ``store``, on a free port: its address."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{store}"]
    command += ["--app-name", app] if app else []
    command += ["--host", "127.0.0.1", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with served(command, f"http://127.0.0.1:{port}/health", env, log, timeout=120):
        yield f"http://127.0.0.1:{port}"


def page_text(driver, *wanted: str, timeout: float = 90) -> str:
    """The page's text once it shows every one of ``wanted`` (the UI renders after its requests return)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
    try:
        WebDriverWait(driver, timeout).until(lambda d: all(w in body(d) for w in wanted))
    except TimeoutException:
        raise AssertionError(f"{driver.current_url} does not show {wanted}:\n{body(driver)[:3000]}") from None
    return body(driver)


def click_experiment(driver, base: str, experiment: str, experiment_id: str) -> str:
    """Open the experiment list (the UI's home, ``/``) and click ``experiment``; the page's URL once it has
    left the list."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{base}/")
    page_text(driver, experiment)
    (link,) = [a for a in driver.find_elements(By.TAG_NAME, "a") if a.text.strip() == experiment]
    assert link.get_attribute("href").endswith(f"#/experiments/{experiment_id}")
    link.click()
    WebDriverWait(driver, 60).until(lambda d: f"/experiments/{experiment_id}/" in d.current_url)
    return driver.current_url


ROWS = """return [...document.querySelectorAll('[role=gridcell][col-id="attributes.`Run Name`"]')].map(
    cell => [Number(cell.closest('[row-index]').getAttribute('row-index')), cell.innerText.split('\\n').pop().trim()])"""
HEADERS = "return [...document.querySelectorAll('[role=columnheader]')].map(e => e.getAttribute('col-id'))"


def click_workflow(driver, label: str) -> None:
    """Click the sidebar's workflow switch: ``GenAI`` or ``Model training``."""
    from selenium.webdriver.common.by import By

    (switch,) = driver.find_elements(By.XPATH, f"//div[@role='button'][normalize-space(.)='{label}']")
    switch.click()


def check_click(driver, base: str, experiment: str, experiment_id: str, parent: str) -> None:
    """A fresh browser (``driver``) clicks the sweep's experiment (``experiment``: its name) in the experiment
    list of flare-ray's MLflow UI (``base``): its runs table, with the parent run (``parent``: its name); where
    the user then picks the GenAI pages in the sidebar, the browser keeps that choice (the next click opens them)."""
    landed = click_experiment(driver, base, experiment, experiment_id)
    assert f"/experiments/{experiment_id}/runs" in landed, landed
    page_text(driver, parent, "Run Name")
    assert parent in [name for _, name in driver.execute_script(ROWS)]
    click_workflow(driver, "GenAI")
    landed = click_experiment(driver, base, experiment, experiment_id)
    assert "workflowType=genai" in landed and "/runs" not in landed, landed


def check_printed_url(
    stdout: str, store: Path, workdir: Path, parent: str, best: dict[str, float], metric: str, mode: str
) -> Path:
    """Served by ``make mlflow``'s UI on ``store``: a fresh browser clicks the sweep's experiment in the experiment
    list (:func:`check_click`: the runs table, with the parent run ``parent``), and a fresh one opens the
    runs-table URL the sweep printed (``stdout``): the runs table, its rows the child runs (``best``: name -> the
    selection's value, ``best/<metric>``) best first (``mode``), then the parent run, its columns the selection's
    value and epoch. Its screenshot."""
    (printed,) = re.findall(r"^  its runs: +(\S+)$", stdout, flags=re.MULTILINE)
    assert printed.startswith(f"{LOCAL_UI}/#/experiments/"), printed  # what `make mlflow` serves
    experiment_id = re.search(r"#/experiments/(\w+)/runs\?", printed)[1]
    experiment = MlflowClient(f"sqlite:///{store}").get_experiment(experiment_id).name
    with mlflow_ui(store, workdir / "mlflow-ui.log") as base:
        with chromium(workdir / "profile-click") as driver:
            check_click(driver, base, experiment, experiment_id, parent)
        with chromium(workdir / "profile-url") as driver:
            driver.get(printed.replace(LOCAL_UI, base, 1))
            page_text(driver, parent, *best)
            assert f"/experiments/{experiment_id}/runs" in driver.current_url
            rows = [name for _, name in sorted(driver.execute_script(ROWS))]
            assert sorted(rows) == sorted([*best, parent]) and rows[-1] == parent, rows  # no metric: last
            values = [best[name] for name in rows[:-1]]
            assert values == sorted(values, reverse=mode == "max"), list(zip(rows, values))  # best first
            headers = driver.execute_script(HEADERS)
            assert {"metrics.`best/epoch`", f"metrics.`best/{metric}`"} <= set(headers), headers
            shot = workdir / "mlflow-runs.png"
            driver.save_screenshot(str(shot))
    return shot


@pytest.fixture
def sweep_records(tmp_path) -> tuple[Path, str, dict[str, float]]:
    """Records written by the sweep's own code (the parent run ``quickstart``, the trials' callback), no Ray:
    the sqlite store, what ``SweepSummary.where()`` prints of them, and the child runs' ``best/`` values."""
    from flare_ray.search.summary import SweepSummary

    store = tmp_path / "mlflow.db"
    uri = f"sqlite:///{store}"
    client = MlflowClient(uri)
    search = {"metric": "validation/macro_f1", "mode": "max", "grid": {"method.flare.fusion": ["add", "mul"]}}
    parent = mlflow_runs.start_parent_run(
        client, "quickstart", "quickstart", {"search": search}, "", {}, resume=False,
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )  # fmt: skip
    callback = MLflowTrialCallback(
        uri, parent, "jav", "validation/macro_f1", "max", str(tmp_path), label=lambda c: f"flare fusion={c['f']}"
    )
    curves = {"add": [50.0, 61.0, 55.0], "mul": [52.0, 58.0, 60.0]}  # add: the best epoch; mul: the best last one
    for fusion, curve in curves.items():
        trial = SimpleNamespace(trial_id=f"t_{fusion}", config={"f": fusion})
        for epoch, value in enumerate(curve, start=1):
            callback.on_trial_result(epoch, [trial], trial, {"epoch": epoch, "validation/macro_f1": value})
    callback.flush()
    summary = SweepSummary(
        "quickstart", "validation/macro_f1", uri, "quickstart", parent,
        runs_url=mlflow_runs.sweep_runs_url(client, uri, parent),
    )  # fmt: skip
    return store, summary.where(), {"jav flare fusion=add": 61.0, "jav flare fusion=mul": 60.0}


def test_a_click_and_the_printed_url_open_the_runs_table_the_url_sorted_by_the_selection(sweep_records, tmp_path):
    """Under ``make mlflow``'s UI, a click from the experiment list opens the sweep's runs table; the URL the
    sweep prints opens it sorted by the selection's value."""
    store, printed, best = sweep_records
    shot = check_printed_url(printed, store, tmp_path, "quickstart", best, "validation/macro_f1", "max")
    assert shot.stat().st_size > 10_000


def test_without_flare_rays_app_a_click_opens_mlflows_genai_pages(sweep_records, tmp_path):
    """Why ``make mlflow`` serves flare-ray's app: under a plain ``mlflow ui`` the same click from the
    experiment list opens the GenAI overview (MLflow's default workflow type), not the runs table. Where this
    fails, MLflow may have changed its default (flare_ray/tracking/ui.py, flare_ray/tracking/urls.py)."""
    store, _, _ = sweep_records
    (experiment_id,) = [
        e.experiment_id for e in MlflowClient(f"sqlite:///{store}").search_experiments() if e.name == "quickstart"
    ]
    with mlflow_ui(store, tmp_path / "mlflow-ui.log", app=None) as base, chromium(tmp_path / "profile") as driver:
        landed = click_experiment(driver, base, "quickstart", experiment_id)
    assert "workflowType=genai" in landed and "/runs" not in landed, landed
