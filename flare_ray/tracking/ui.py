"""flare-ray's MLflow UI: MLflow's own server and UI, whose experiment pages open on the runs table in a browser
that has not chosen otherwise (:func:`create_app`; ``mlflow ui --app-name flare-ray``, as ``make mlflow`` runs it).

MLflow 3.17's UI opens an experiment on the pages of its *workflow type* (:mod:`flare_ray.tracking.urls`): the
URL's ``workflowType``, else the browser's choice in the sidebar (local storage ``mlflow.workflowType_v1``, the
JSON of ``"genai"`` or ``"machine_learning"``), else ``genai``. This app serves the UI's page with a script that,
before MLflow's own code runs, stores ``machine_learning`` as that choice where the browser has none: a click from
the experiment list then opens the runs table, and a choice made later in the sidebar is kept. Everything else is
MLflow's, unchanged. It is an MLflow app plugin (entry point group ``mlflow.app``, as MLflow's ``basic-auth``).
"""

from __future__ import annotations

import json
import os
import re

from flask import Flask, Response
from mlflow.environment_variables import _MLFLOW_SGI_NAME
from mlflow.server import app as mlflow_app

from flare_ray.tracking.urls import MACHINE_LEARNING

WORKFLOW_KEY = "mlflow.workflowType_v1"  # the UI's key: useLocalStorage({key: "mlflow.workflowType", version: 1})
# the UI reads the value as JSON (JSON.parse), so the string is stored with its quotes: "machine_learning"
SCRIPT = "<script>try{if(localStorage.getItem(%s)===null)localStorage.setItem(%s,%s)}catch(e){}</script>" % (
    json.dumps(WORKFLOW_KEY),
    json.dumps(WORKFLOW_KEY),
    json.dumps(json.dumps(MACHINE_LEARNING)),
)
INDEX_ENDPOINT = "serve"  # MLflow's view of "/" (its static prefix's), the UI's index.html


def with_runs_first(html: str) -> str:
    """The UI's page ``html`` with :data:`SCRIPT` first in its ``<head>`` (before MLflow's deferred bundle)."""
    page, found = re.subn(r"<head\b[^>]*>", lambda head: head[0] + SCRIPT, html, count=1)
    if not found:
        raise ValueError("MLflow's index.html has no <head>: flare_ray.tracking.ui cannot add its script")
    return page


def create_app(app: Flask = mlflow_app):
    """MLflow's tracking server ``app`` (its Flask app) with the UI's page served by :func:`with_runs_first`;
    as MLflow's own apps do, the FastAPI app around it where the server is uvicorn (``mlflow ui``'s default)."""
    serve = app.view_functions[INDEX_ENDPOINT]

    def serve_runs_first():
        index = os.path.join(app.static_folder, "index.html")
        if not os.path.exists(index):  # a source install without a built UI: MLflow's own answer
            return serve()
        with open(index, encoding="utf-8") as file:
            page = with_runs_first(file.read())
        return Response(page, mimetype="text/html", headers={"Cache-Control": "no-cache"})

    app.view_functions[INDEX_ENDPOINT] = serve_runs_first
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(app)
    return app
