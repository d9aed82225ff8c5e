"""Credentials never travel in a config, an MLflow record, a log or a runtime environment: a URI's password
or credential query parameter is found here, refused in a config (:mod:`flare_ray.experiment.checks`) and
blanked in anything printed or logged (:func:`redact`); Ray Tune's copying of the AWS credentials into every
trial's runtime environment is switched off (:func:`keep_out_of_runtime_envs`).

Credentials reach a sweep from its environment instead: ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD`` for a tracking server with basic auth, the node's cloud identity (or
``AWS_*``, ``GOOGLE_APPLICATION_CREDENTIALS``, inherited by the processes of a Ray started on that node) for
``s3://`` and ``gs://``, ``RAY_AUTH_TOKEN`` (or Ray's token file) for the cluster (``cluster/README.md``).
"""

from __future__ import annotations

import re

# scheme://user:password@host (the user part may be empty: scheme://:password@host)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@\s:]*):(?P<password>[^/@\s]+)@")
# ?name=value or &name=value (any case) whose name says it holds a credential: token, access_token, api_key,
# apikey, key, password, secret, client_secret, sig, signature, X-Amz-Signature, X-Amz-Credential,
# X-Amz-Security-Token, auth, ...
_QUERY = re.compile(
    r"(?P<name>[?&;](?:[\w.-]*(?:token|key|secret|passw|pwd|signature|credential|auth)[\w.-]*|sig)=)"
    r"(?P<value>[^&;#\s'\"]+)",
    re.IGNORECASE,
)
REDACTED = "***"

# What Ray Tune (2.x) copies from the driver's environment into the runtime environment of every trial, which
# Ray's runtime-env agent then writes to its log (``runtime_env_agent.log`` of the session folder).
AWS_CREDENTIALS = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})


def has_password(text: str) -> bool:
    """Whether ``text`` holds a URI with a password in it, or a credential in a query string (``?token=``)."""
    return _USERINFO.search(text) is not None or _QUERY.search(text) is not None


def redact(text: str) -> str:
    """``text`` with the password of every URI in it and the value of every credential query parameter
    replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    return _QUERY.sub(lambda m: f"{m['name']}{REDACTED}", text)


def without_userinfo(uri: str) -> str:
    """``uri`` without its ``user:password@`` (e.g. to probe a server: ``urllib`` takes it for the host)."""
    return _USERINFO.sub(lambda m: m["scheme"], uri)


def unredact(redacted: str, *candidates: str | None) -> str:
    """The first of ``candidates`` (e.g. ``$MLFLOW_TRACKING_URI``) that :func:`redact` turns into ``redacted``:
    a URI saved without its credentials, given them back; else ``redacted`` itself."""
    return next((c for c in candidates if c and redact(c) == redacted), redacted)


def keep_out_of_runtime_envs() -> None:
    """Stop Ray Tune from copying this process's ``AWS_*`` credentials into each trial's runtime environment,
    where Ray writes them in plaintext to its logs. The trials' processes still have them: a Ray this process
    starts inherits its environment; the nodes of a cluster use their own (their instance role, or the
    ``AWS_*`` of the ``ray start`` there)."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(AWS_CREDENTIALS)
