"""Where a person looks at a sweep's MLflow records: the browser URL of its experiment's runs table
(:func:`runs_url`), the command that starts the UI (:func:`ui_command`) and the one that predicts with a
registered adapter (:func:`predict_command`); imports no MLflow.

Why a URL, and not a tag: MLflow 3.17's UI chooses an experiment's pages (the GenAI overview, or the runs
table) by its *workflow type*: the page URL's ``workflowType`` parameter, else the browser's local storage
(``mlflow.workflowType``, set by the sidebar's switch), else ``genai``. The experiment's ``mlflow.experimentKind``
tag is read only where the UI's "workflow type" feature flag is off, and 3.17's build has it on for good; the
server has no setting for it either (nothing it serves the UI carries one). So on a fresh browser profile a
plain ``mlflow ui`` (or a shared tracking server) lands on the GenAI overview at a click from the experiment
list (the list's links carry no workflow type, even where the list itself was opened with one), until the user
picks "Model training" in the sidebar (kept in that browser); the URL of :func:`runs_url` lands on the runs
table, on any server. ``make mlflow`` (and :func:`ui_command`) serves MLflow's UI with flare-ray's app
(``--app-name flare-ray``, :mod:`flare_ray.tracking.ui`), which stores "Model training" as the browser's choice
where it has none: there a click from the experiment list lands on the runs table too.

The runs table reads its search from the URL (``searchFilter``, ``orderByKey``, ``orderByAsc``, ...), but not
its columns: those it keeps in the browser's local storage, per experiment. Except in a *shared view*: the
URL's ``viewStateShareKey=<key>`` names an experiment tag ``mlflow.sharedViewState.<key>`` holding the view
(search and columns) as JSON, which the UI applies (what its "Share" button writes). A sweep writes one
(:func:`runs_view`): its runs sorted by the selection's own value (``best/<metric>``, logged on every trial's
run by :class:`~flare_ray.tracking.callback.MLflowTrialCallback`), best first, with the columns of what the
sweep varies and its scores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from pathlib import Path
from urllib.parse import quote, urlencode

from flare_ray.secrets import redact, without_userinfo

LOCAL_UI = "http://127.0.0.1:5000"  # what `make mlflow` (`mlflow ui`) serves
UI_APP = "flare-ray"  # `mlflow ui --app-name flare-ray`: MLflow's UI, experiments opening on their runs (tracking.ui)
DEFAULT_STORE = Path("outputs/mlflow.db")  # the quickstart's store, the one `make mlflow` opens
MACHINE_LEARNING = "machine_learning"  # the UI's workflow type whose experiment pages are the runs table
BEST_PREFIX = (
    "best/"  # best/<metric>: a trial's best epoch's score, the value selection compares (on every trial's run)
)
BEST_EPOCH = "best/epoch"  # and that epoch
RUN_NAME_COLUMN = "attributes.`Run Name`"
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # + the key: an experiment tag the UI reads a shared view from


def _is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def sort_key(metric: str) -> str:
    """The runs table's sort key of a trial's selection score ``best/<metric>`` (the UI's ``metrics.`name```)."""
    return f"metrics.`{BEST_PREFIX}{metric}`"


def ui_base(tracking_uri: str) -> str:
    """The UI's address: the tracking server itself (without its credentials), else the local ``mlflow ui``."""
    return redact(without_userinfo(tracking_uri)).rstrip("/") if _is_server(tracking_uri) else LOCAL_UI


def runs_view(metric: str | None, mode: str, varied: list[str]) -> tuple[str, str]:
    """A sweep's view of its runs table, as ``(key, JSON)`` for the experiment tag ``SHARED_VIEW_TAG + key``:
    sorted by ``best/<metric>``, best first (``mode``: ``max`` or ``min``), with the columns of the keys the
    sweep varies (``varied``, dotted params), the selection's value and epoch, and the test score of ``metric``.
    The key is the view's digest: the same view, the same tag."""
    columns = []
    state: dict = {"searchFilter": ""}
    if metric:
        columns += [sort_key(metric), f"metrics.`{BEST_EPOCH}`"]
        if metric.startswith("validation/"):
            columns.append(f"metrics.`test/{metric.split('/', 1)[1]}`")
        state.update(orderByKey=sort_key(metric), orderByAsc=mode == "min")
    columns += [f"params.`{key}`" for key in varied]
    state["selectedColumns"] = columns
    # a run's name and the sort column wide enough to read (the UI applies the widths of columnOrder's only)
    state["columnOrder"] = [RUN_NAME_COLUMN, *columns]
    state["columnWidths"] = {RUN_NAME_COLUMN: 260, **({sort_key(metric): 170} if metric else {})}
    text = json.dumps(state, sort_keys=True)
    return "flare-ray-" + hashlib.sha256(text.encode()).hexdigest()[:16], text


def runs_url(
    tracking_uri: str,
    experiment_id: str,
    ui: str | None = None,
    *,
    view: str | None = None,
    metric: str | None = None,
    mode: str = "max",
) -> str:
    """The browser URL of experiment ``experiment_id``'s runs table: on the tracking server itself for an
    ``http(s)://`` tracking URI (its credentials left out), else on ``ui`` (default the local ``mlflow ui``,
    :data:`LOCAL_UI`). ``view``: the key of a shared view (:func:`runs_view`) the table opens with; else
    ``metric`` (e.g. ``validation/macro_f1``): sorted by its ``best/`` value, best first (``mode``: ``max`` or
    ``min``)."""
    base = (ui or ui_base(tracking_uri)).rstrip("/")
    query = {"workflowType": MACHINE_LEARNING}
    if view:  # alone: the UI ignores a shared view where the URL has search parameters of its own
        query["viewStateShareKey"] = view
    elif metric:
        query.update(orderByKey=sort_key(metric), orderByAsc=str(mode == "min").lower())
    return f"{base}/#/experiments/{quote(str(experiment_id), safe='')}/runs?{urlencode(query, quote_via=quote)}"


def _venv_mlflow() -> str:
    """This interpreter's ``mlflow`` command: relative to the current folder where it is below it
    (``.venv/bin/mlflow``), else its absolute path."""
    path = Path(sys.executable).parent / "mlflow"
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return str(path)
    return str(path) if relative.startswith("..") else relative


def _is_default_store(tracking_uri: str) -> bool:
    if not tracking_uri.startswith("sqlite:///"):
        return False
    path = Path(tracking_uri[len("sqlite:///") :])
    return path == DEFAULT_STORE or path == DEFAULT_STORE.resolve()


def ui_command(tracking_uri: str) -> str:
    """How to open the UI of ``tracking_uri``'s records, as typed from the repository root: ``make mlflow`` for
    the quickstart's store (``sqlite:///outputs/mlflow.db``); a tracking server's own address (it is its UI);
    else this virtual environment's ``mlflow ui`` spelled out as ``make mlflow`` runs it, with flare-ray's app
    (``.venv/bin/mlflow ui --backend-store-uri ... --app-name flare-ray``)."""
    if _is_server(tracking_uri):
        return ui_base(tracking_uri)
    if _is_default_store(tracking_uri):
        return "make mlflow"
    store = shlex.quote(redact(tracking_uri))
    return f"{_venv_mlflow()} ui --backend-store-uri {store} --host 127.0.0.1 --port 5000 --app-name {UI_APP}"


def predict_command(model: str, tracking_uri: str) -> str:
    """The ``flare-ray predict`` command that predicts with registered model ``model`` (``name/version``) of
    the store at ``tracking_uri`` (named unless it is predict's default store; its credentials left out)."""
    store = (
        ""
        if _is_default_store(tracking_uri)
        else f" --tracking-uri {shlex.quote(redact(without_userinfo(tracking_uri)))}"
    )
    return f"flare-ray predict {shlex.quote(model)} --input rows.csv --output predicted.csv{store}"
