"""Credentials never travel in a config or an MLflow record: a URI's password is found here, refused in a
config (:mod:`flare_ray.experiment.checks`) and blanked in anything logged (:mod:`flare_ray.tracking`).

Credentials reach a sweep from its environment instead: ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD`` for a tracking server with basic auth, the node's cloud identity (or
``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``) for ``s3://`` and ``gs://``, ``RAY_AUTH_TOKEN`` (or Ray's
token file) for the cluster (``cluster/README.md``).
"""

from __future__ import annotations

import re

# scheme://user:password@host (the user part may be empty: scheme://:password@host)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*):(?P<password>[^/@\s]+)@")
REDACTED = "***"


def has_password(text: str) -> bool:
    """Whether ``text`` holds a URI with a password in it."""
    return _USERINFO.search(text) is not None


def redact(text: str) -> str:
    """``text`` with the password of every URI in it replaced by ``***``."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
