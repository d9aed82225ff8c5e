"""Credentials in URIs are found and blanked wherever a URI is shown: in query strings (``?token=``) as well as
before the host (``user:pass@``); the dry run, the reachability error and Tune's saved callbacks show none;
and Ray Tune no longer copies the AWS credentials into the trials' runtime environment (where Ray logs them)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flare_ray.cli.tune import main
from flare_ray.secrets import has_password, redact, unredact, without_userinfo
from tests.helpers import QUICKSTART, free_port

URI = "https://bob:hunter2@mlflow.example:5000/?token=tok123"


@pytest.mark.parametrize(
    "uri, redacted",
    [
        ("https://h/x?token=abc&page=2", "https://h/x?token=***&page=2"),
        ("https://h/x?page=2&ACCESS_TOKEN=abc#top", "https://h/x?page=2&ACCESS_TOKEN=***#top"),
        ("https://h/?api_key=1&apikey=2;key=3", "https://h/?api_key=***&apikey=***;key=***"),
        ("https://h/?password=p&secret=s&client_secret=c", "https://h/?password=***&secret=***&client_secret=***"),
        ("https://blob/c?sv=1&sig=abc%2Fd", "https://blob/c?sv=1&sig=***"),  # an Azure SAS
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=ff&X-Amz-Security-Token=t",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***",
        ),
        ("'s3://b/x?signature=abc'", "'s3://b/x?signature=***'"),  # in a repr: the quote is not the value's
        (URI, "https://bob:***@mlflow.example:5000/?token=***"),
    ],
)
def test_credentials_in_query_strings_are_found_and_blanked(uri, redacted):
    assert has_password(uri) and redact(uri) == redacted


@pytest.mark.parametrize("text", ["https://h/x?page=2&sort=name", "sqlite:///outputs/mlflow.db", "http://h:5000/a@b"])
def test_a_uri_without_credentials_is_left_alone(text):
    assert not has_password(text) and redact(text) == text


def test_a_redacted_uri_gets_its_credentials_back_from_the_one_it_came_from():
    assert unredact(redact(URI), None, "https://other/", URI) == URI
    assert unredact(redact(URI), "https://other/") == redact(URI)
    assert without_userinfo(URI) == "https://mlflow.example:5000/?token=tok123"


def test_the_dry_run_shows_no_credential_of_the_tracking_uri(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", URI)
    assert main([str(QUICKSTART), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# mlflow: https://bob:***@mlflow.example:5000/?token=***," in out
    assert "hunter2" not in out and "tok123" not in out


def test_the_reachability_probe_sends_no_credentials_and_its_error_shows_none():
    from flare_ray.tracking.config import TrackingUnreachable, check_reachable

    seen: list[tuple[str, str | None]] = []

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:  # the user:password@ is not taken for the host
        check_reachable(f"http://bob:hunter2@127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("/health", None)]

    with pytest.raises(TrackingUnreachable) as err:
        check_reachable(f"http://bob:hunter2@127.0.0.1:{free_port()}/?token=tok123")
    assert "http://bob:***@127.0.0.1:" in str(err.value) and "?token=***" in str(err.value)
    assert "hunter2" not in str(err.value) and "tok123" not in str(err.value)


def test_the_mlflow_callback_is_saved_without_the_password_and_resumed_with_it(monkeypatch):
    import ray.cloudpickle as pickle  # as Tune saves its callbacks

    from flare_ray.tracking.callback import MLflowTrialCallback

    uri = "http://bob:hunter2@127.0.0.1:5000"
    saved = pickle.dumps(MLflowTrialCallback(uri, "parent", "jav", "validation/macro_f1", "max", "outputs"))
    assert b"hunter2" not in saved  # what Tune writes to tuner.pkl in the storage folder
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # --resume runs with the same environment
    assert pickle.loads(saved).tracking_uri == uri


def test_ray_tune_copies_no_aws_credentials_into_the_trials_runtime_environment(monkeypatch):
    from ray.tune.execution.class_cache import _ActorClassCache

    from flare_ray.secrets import keep_out_of_runtime_envs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake-secret")
    keep_out_of_runtime_envs()

    class Trainable:
        pass

    env = _ActorClassCache().get(Trainable)._default_options["runtime_env"]["env_vars"]
    assert not any(name.startswith("AWS_") for name in env), env


@pytest.mark.parametrize("command", ["report", "predict"])
def test_report_and_predict_show_mlflow_errors_without_the_uris_password(command, tmp_path, monkeypatch, capsys):
    """A tracking server that refuses the connection: MLflow's own error names the URI, password and all; the
    commands print it redacted, with an exit status, instead of a traceback."""
    from tests.helpers import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri = f"http://alice:s3cr3t-pw@127.0.0.1:{free_port()}/?token=t0ken-value"
    if command == "report":
        from flare_ray.cli.report import main

        code = main(["some-sweep", "--tracking-uri", uri, "--output", str(tmp_path / "r")])
    else:
        from flare_ray.cli.predict import main

        rows = tmp_path / "in.jsonl"
        rows.write_text('{"text": "apik"}\n')
        code = main(["flare/1", "--input", str(rows), "--output", str(tmp_path / "out.jsonl"), "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code in (1, 2) and err.startswith("error: ") and "http://alice:***@127.0.0.1" in err, err
    assert "s3cr3t-pw" not in err and "t0ken-value" not in err and "Traceback" not in err
