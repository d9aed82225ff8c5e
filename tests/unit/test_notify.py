"""``flare-ray tune --notify``: a command run with the sweep's summary, or a webhook it POSTs to (a local HTTP
server here); one that fails is a warning that never shows the webhook's secret path."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from flare_ray.cli.tune import parser
from flare_ray.search.notify import ENV, notify, payload, shown, target

SUMMARY = "Best trials of sweep 'quickstart' (selected on validation/macro_f1):\njav  flare  67.50"


@pytest.fixture
def webhook():
    """A local HTTP server on a free port: what it received, and its URL (path ``/hooks/SECRET``); answers
    ``status`` (a list: set it to ``[500]`` to fail)."""
    received: list[dict] = []
    status = [204]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append({"path": self.path, "type": self.headers["Content-Type"], "json": json.loads(body)})
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args):  # quiet
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield received, status, f"http://127.0.0.1:{server.server_port}/hooks/SECRET?token=abc"
    server.shutdown()
    server.server_close()


def test_a_command_gets_the_summary_on_stdin_and_in_its_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("OUT", str(tmp_path))
    command = 'cat > "$OUT/stdin.txt"; printf "%s|%s|%s" "$FLARE_RAY_SWEEP" "$FLARE_RAY_STATUS" "$FLARE_RAY_EXIT_CODE" > "$OUT/env.txt"'
    assert notify(command, payload("quickstart", 0, SUMMARY, parent_run_id="abc123")) is None
    assert (tmp_path / "stdin.txt").read_text() == SUMMARY
    assert (tmp_path / "env.txt").read_text() == "quickstart|finished|0"


@pytest.mark.parametrize("code, status", [(0, "finished"), (1, "failed"), (2, "failed"), (130, "interrupted")])
def test_the_status_follows_the_exit_status(code, status):
    assert payload("s", code, "")["status"] == status


def test_a_webhook_gets_the_summary_as_json(webhook):
    received, _, url = webhook
    message = payload("quickstart", 1, SUMMARY, tracking_uri="http://user:hunter2@mlflow:5000")
    assert notify(url, message) is None
    (got,) = received
    assert got["path"] == "/hooks/SECRET?token=abc" and got["type"] == "application/json"
    body = got["json"]
    assert body["sweep"] == "quickstart" and body["status"] == "failed" and body["exit_code"] == 1
    assert body["summary"] == SUMMARY and body["text"].startswith("flare-ray sweep 'quickstart' failed (exit 1)\n")
    assert "hunter2" not in json.dumps(body)  # credentials redacted


def test_a_failing_notification_is_one_warning_without_the_secret(webhook, tmp_path):
    _, status, url = webhook
    status[0] = 500
    warning = notify(url, payload("quickstart", 0, SUMMARY))
    assert warning.startswith("warning: the notification to http://127.0.0.1:") and "HTTP 500" in warning
    assert "SECRET" not in warning and "token" not in warning
    closed = url.replace(url.split(":")[2].split("/")[0], "1")  # port 1: nothing listens
    assert "SECRET" not in notify(closed, payload("quickstart", 0, SUMMARY))
    failing = notify("echo 'no such channel' >&2; exit 3", payload("quickstart", 0, SUMMARY))
    assert failing == "warning: the notification to the notification command failed: exit status 3: no such channel"


def test_the_target_is_the_option_else_the_environment_never_the_yaml(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert target(None) is None
    monkeypatch.setenv(ENV, "https://hooks.example.org/T0/B0/XYZ")
    assert target(None) == "https://hooks.example.org/T0/B0/XYZ"
    assert target("notify-send done") == "notify-send done" and target("") is None  # --notify '': none
    assert shown(target(None)) == "https://hooks.example.org/***"
    args = parser().parse_args(["search_spaces/quickstart.yaml", "--notify", "https://hooks.example.org/x"])
    assert args.notify == "https://hooks.example.org/x"
