"""Finding a trial's adapter in MLflow: a registered model (``name``, ``name/version``) or a run id, and
downloading its ``adapter/`` artifacts (used by ``python -m flare_ray.predict``)."""

from __future__ import annotations

import re
from pathlib import Path

from flare_ray.secrets import redact

from .mlflow_runs import ADAPTER_PATH, connect


class LookupFailed(ValueError):
    """No such store, model, version or run, or its adapter could not be downloaded: one line, the credentials
    of the URIs in it (the tracking URI's, MLflow's error's) blanked."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


def check_tracking_uri(tracking_uri: str) -> str:
    """A sqlite store must exist (MLflow would create an empty one and then find no model)."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///") :])
        if not path.is_file():
            raise LookupFailed(
                f"{path}: no MLflow store (tracking URI {tracking_uri}); pass --tracking-uri or set MLFLOW_TRACKING_URI"
            )
    return tracking_uri


def _not_found(err: Exception) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(getattr(err, "error_code", "")) or "not found" in str(err).lower()


def resolve_model(tracking_uri: str, reference: str) -> tuple[str, str, str | None, str | None]:
    """``(run_id, artifact_path, model_name, version)`` of ``reference``: a registered model ``name`` (its
    latest version), ``name/version`` (also as ``models:/name/version``), or a run id (also ``runs:/<id>``)."""
    from mlflow.exceptions import MlflowException

    client = connect(tracking_uri)
    ref = reference.strip()
    if ref.startswith("runs:/"):
        run_id, _, path = ref[len("runs:/") :].partition("/")
        return _run_id(client, run_id, reference, tracking_uri), path or ADAPTER_PATH, None, None
    ref = ref.removeprefix("models:/")
    name, version = ref, None
    match = re.fullmatch(r"(.+)/(\d+)", ref)
    if match:
        name, version = match.group(1), match.group(2)
    try:
        if version is None:
            versions = client.search_model_versions(f"name='{name}'") if "'" not in name else []
            if versions:
                version = str(max(int(v.version) for v in versions))
        if version is not None:
            found = client.get_model_version(name, version)
            run_id, path = _source(found.source, found.run_id)
            return run_id, path, name, version
    except MlflowException as err:
        if not _not_found(err):
            raise LookupFailed(f"model {reference!r}: {str(err).splitlines()[0]} ({tracking_uri})") from None
        if match:
            raise LookupFailed(
                f"unknown model {reference!r}: {name!r} has no version {version} in {tracking_uri}"
            ) from None
    return _run_id(client, ref, reference, tracking_uri), ADAPTER_PATH, None, None


def _run_id(client, run_id: str, reference: str, tracking_uri: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id).info.run_id
    except MlflowException:
        raise LookupFailed(
            f"unknown model {reference!r}: no registered model of that name and no run with that id in {tracking_uri}"
        ) from None


def _source(source: str, run_id: str | None) -> tuple[str, str]:
    """A model version's ``runs:/<run_id>/<path>`` source as (run id, artifact path)."""
    if source.startswith("runs:/"):
        found, _, path = source[len("runs:/") :].partition("/")
        return found, path or ADAPTER_PATH
    if run_id:
        return run_id, ADAPTER_PATH
    raise LookupFailed(f"model version source {source!r} is no runs:/ URI of a trial")


def download_adapter(tracking_uri: str, reference: str, destination: Path) -> tuple[str, Path, str | None, str | None]:
    """``(run_id, folder, model_name, version)``: ``reference``'s adapter artifacts downloaded into ``destination``."""
    from mlflow.artifacts import download_artifacts

    check_tracking_uri(tracking_uri)
    run_id, path, name, version = resolve_model(tracking_uri, reference)
    try:
        folder = Path(
            download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=tracking_uri, dst_path=str(destination))
        )
    except Exception as err:  # noqa: BLE001 - mlflow and the artifact stores raise many types
        raise LookupFailed(
            f"{reference}: cannot download {path}/ of run {run_id}: {str(err).splitlines()[0]}"
        ) from None
    return run_id, folder, name, version
