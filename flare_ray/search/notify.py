"""A notification when a sweep ends or fails: ``flare-ray tune --notify TARGET`` (or ``$FLARE_RAY_NOTIFY``; never
the YAML, which is shared and versioned while a webhook's URL is a secret).

``TARGET`` is an ``http(s)://`` webhook URL or a command:

* **a webhook** gets a POST of JSON: ``{"sweep", "status", "exit_code", "summary", "text", ...}`` (``text``: one
  message, as Slack's and Mattermost's incoming webhooks read it), within :data:`WEBHOOK_TIMEOUT` seconds;
* **a command** runs through the shell with the summary on its standard input and in its environment:
  ``FLARE_RAY_SWEEP``, ``FLARE_RAY_STATUS`` (``finished``, ``failed`` or ``interrupted``),
  ``FLARE_RAY_EXIT_CODE``, ``FLARE_RAY_SUMMARY`` and the others of :func:`payload` (``FLARE_RAY_<KEY>``), within
  :data:`COMMAND_TIMEOUT` seconds.

A notification that fails is one warning line; it never changes the sweep's exit status. A webhook's URL is
never shown whole (its path and query often are its secret), nor a command line (it may hold a token).
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from flare_ray.secrets import redact

ENV = "FLARE_RAY_NOTIFY"
WEBHOOK_TIMEOUT = 10.0  # seconds
COMMAND_TIMEOUT = 60.0
STATUSES = {0: "finished", 130: "interrupted"}  # by exit status; any other: failed


def target(option: str | None) -> str | None:
    """The notification's target: the ``--notify`` option, else ``$FLARE_RAY_NOTIFY``; None: no notification."""
    chosen = option if option is not None else os.environ.get(ENV)
    return (chosen.strip() or None) if chosen else None


def status(exit_code: int) -> str:
    """``finished`` (exit 0), ``interrupted`` (130), else ``failed`` (some trials or the sweep failed, or it was
    refused before it started)."""
    return STATUSES.get(exit_code, "failed")


def is_webhook(where: str) -> bool:
    return urllib.parse.urlsplit(where).scheme.lower() in {"http", "https"}


def shown(where: str) -> str:
    """How a target appears in a message: a webhook as ``scheme://host/***``, a command as ``the command``."""
    if not is_webhook(where):
        return "the notification command"
    parts = urllib.parse.urlsplit(where)
    host = parts.hostname or ""
    return redact(f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}/***")


def payload(sweep: str, exit_code: int, summary: str, **extra: Any) -> dict[str, Any]:
    """What a notification says: the sweep, its status and exit code, the summary (and ``text``: the whole
    message in one string), and ``extra`` (e.g. ``parent_run_id``, ``tracking_uri``), credentials redacted."""
    state = status(exit_code)
    out = {"sweep": sweep, "status": state, "exit_code": exit_code, "summary": redact(summary)}
    out.update({k: redact(str(v)) for k, v in extra.items() if v is not None})
    out["text"] = f"flare-ray sweep '{sweep}' {state} (exit {exit_code})\n{out['summary']}".rstrip()
    return out


def notify(where: str, message: dict[str, Any]) -> str | None:
    """Send ``message`` (:func:`payload`) to ``where``; None if it went, else the warning line to print."""
    try:
        if is_webhook(where):
            _post(where, message)
        else:
            _run(where, message)
    except _Failed as err:
        return f"warning: the notification to {shown(where)} failed: {_clean(str(err), where)}"
    except Exception as err:  # noqa: BLE001 - a notification never fails the sweep
        return f"warning: the notification to {shown(where)} failed: {type(err).__name__}: {_clean(str(err), where)}"
    return None


class _Failed(RuntimeError):
    pass


def _post(url: str, message: dict[str, Any]) -> None:
    request = urllib.request.Request(
        url,
        data=json.dumps(message).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "flare-ray"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT) as response:
            response.read()
    except urllib.error.HTTPError as err:
        raise _Failed(f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise _Failed(str(err.reason)) from None
    except TimeoutError:
        raise _Failed(f"no answer within {WEBHOOK_TIMEOUT:.0f} s") from None


def _run(command: str, message: dict[str, Any]) -> None:
    env = {**os.environ, **{f"FLARE_RAY_{k.upper()}": str(v) for k, v in message.items() if k != "text"}}
    env.pop(ENV, None)  # (a command that calls flare-ray again does not notify again)
    try:
        done = subprocess.run(
            command,
            shell=True,
            input=message["summary"],
            env=env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise _Failed(f"it did not end within {COMMAND_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise _Failed(f"exit status {done.returncode}" + (f": {said[-1][:300]}" if said else ""))


def _clean(text: str, where: str) -> str:
    """An error's message without the target in it, credentials redacted."""
    return redact(text.replace(where, shown(where)))
