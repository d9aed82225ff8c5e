"""Which checkpoint a restarted trial continues from (the newest whose files match their content hash, else the
one before, else from scratch, with a warning naming the file), what an epoch's checkpoint holds, and that a
trial's MLflow run keeps each epoch once when the trial reports epochs again. No Ray cluster."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest

from flare_ray.digests import MANIFEST, write_manifest
from flare_ray.training import session
from flare_ray.training.checkpoints import TRIAL_CONFIG_NAME


def checkpoint(folder: Path, trained: int, best: int | None = None, final: bool = False) -> Path:
    """A checkpoint folder as the loop writes one: adapter, trial record, training state, manifest last."""
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 8)
    (folder / "resume").mkdir()
    (folder / "resume" / "state.json").write_text(json.dumps({"epoch": trained}))
    record = {
        "language": "jav",
        "epoch": best or trained,
        "trained_epochs": trained,
        **({"final": True} if final else {}),
    }
    (folder / TRIAL_CONFIG_NAME).write_text(json.dumps(record))
    write_manifest(folder)
    return folder


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def run_folder(tmp_path, monkeypatch):
    """A run's folder on (local) storage, where ``session.latest_checkpoint`` looks; Ray hands over nothing."""
    folder = tmp_path / "run_trial_0"
    folder.mkdir()
    monkeypatch.setattr(session, "_ray_checkpoint", lambda: (None, pyarrow.fs.LocalFileSystem(), str(folder)))
    return folder


def latest(capsys) -> tuple[str | None, str]:
    """The checkpoint a restart would continue from (its folder's name; None: from scratch), and the warnings."""
    with session.latest_checkpoint() as restored:
        name = None if restored is None else restored.folder.name
        assert restored is None or restored.where == str(restored.folder)  # local storage: used in place
    return name, capsys.readouterr().out


def test_a_restart_continues_from_the_newest_checkpoint_by_the_epochs_it_holds(run_folder, capsys):
    # Tune restored from an older state numbers its next checkpoints from there: the folder names do not tell
    # which is newest, the epochs each checkpoint records do
    checkpoint(run_folder / "checkpoint_000000", trained=1)
    checkpoint(run_folder / "checkpoint_000001", trained=4, best=1)
    checkpoint(run_folder / "checkpoint_000002", trained=3, best=1)
    assert latest(capsys) == ("checkpoint_000001", "")


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_good_one(run_folder, capsys):
    checkpoint(run_folder / "checkpoint_000000", trained=1)
    newest = checkpoint(run_folder / "checkpoint_000001", trained=2, best=1)
    truncate(newest / "adapter_model.safetensors")
    chosen, warnings = latest(capsys)
    assert chosen == "checkpoint_000000"
    assert f"checkpoint {newest} is not usable" in warnings
    assert f"{newest / 'adapter_model.safetensors'} has 1024 bytes, 2048 were written" in warnings


def test_a_half_written_checkpoint_without_its_manifest_is_passed_over(run_folder, capsys):
    checkpoint(run_folder / "checkpoint_000000", trained=1)
    unfinished = checkpoint(run_folder / "checkpoint_000001", trained=2)
    (unfinished / MANIFEST).unlink()  # the process died before the manifest, written last
    chosen, warnings = latest(capsys)
    assert chosen == "checkpoint_000000" and f"{unfinished} has no {MANIFEST}" in warnings


def test_a_finished_trials_damaged_final_checkpoint_falls_back_to_its_last_epoch(run_folder, capsys):
    """The final checkpoint (with the final result) damaged: the trial continues from its last epoch's
    checkpoint, which holds every epoch trained (it only scores the test split again), rather than failing."""
    checkpoint(run_folder / "checkpoint_000002", trained=3, best=2)
    final = checkpoint(run_folder / "checkpoint_000003", trained=3, best=2, final=True)
    state = final / "resume" / "state.json"
    state.write_text(state.read_text().replace("3", "4"))  # same size, other bytes
    chosen, warnings = latest(capsys)
    assert chosen == "checkpoint_000002"
    assert f"{state} does not match the SHA-256" in warnings


def test_with_no_good_checkpoint_the_trial_starts_from_scratch_saying_why(run_folder, capsys):
    only = checkpoint(run_folder / "checkpoint_000000", trained=1)
    truncate(only / "resume" / "state.json")
    chosen, warnings = latest(capsys)
    assert chosen is None
    assert "the trial starts from scratch" in warnings and str(only / "resume" / "state.json") in warnings


def test_a_first_start_has_no_checkpoint_and_no_warning(run_folder, capsys):
    assert latest(capsys) == (None, "")


def test_an_epoch_checkpoint_holds_the_best_adapter_its_record_and_training_state(tmp_path):
    """Written every epoch: the best epoch's adapter and predictions at its top level (what the MLflow run, the
    registry and ``score_checkpoint`` read), the epochs trained, the state to continue from, a manifest."""
    from flare_ray.digests import folder_problem
    from flare_ray.experiment import load_experiment
    from flare_ray.training import loop
    from flare_ray.training.state_files import load_state
    from tests.helpers import QUICKSTART

    kept = tmp_path / "best"
    (kept / "predictions").mkdir(parents=True)
    (kept / "adapter_model.safetensors").write_bytes(b"best adapter")
    (kept / "predictions" / "validation.parquet").write_bytes(b"best predictions")
    experiment = load_experiment(QUICKSTART)
    folder = loop._epoch_checkpoint(kept, experiment, "jav", 1, 3, {"epoch": 3, "adapter": None, "best": {"epoch": 1}})
    try:
        assert folder_problem(folder) is None
        assert (folder / "adapter_model.safetensors").read_bytes() == b"best adapter"
        record = json.loads((folder / TRIAL_CONFIG_NAME).read_text())
        assert (record["epoch"], record["trained_epochs"], record["language"]) == (1, 3, "jav")
        assert load_state(folder / "resume")["epoch"] == 3
        again = loop._keep_best(folder)  # what a restart keeps of it for the checkpoints that follow
        assert sorted(p.relative_to(again).as_posix() for p in again.rglob("*")) == [
            "adapter_model.safetensors",
            "predictions",
            "predictions/validation.parquet",
        ]
    finally:
        import shutil

        shutil.rmtree(folder)


# -- the MLflow run of a trial that reports epochs again ------------------------------------------------------------


def trial(trial_id: str = "t1"):
    return SimpleNamespace(trial_id=trial_id, config={"training.seed": 0}, error_file=None)


def history(callback, run_id: str, key: str) -> list[int]:
    callback.flush()
    return sorted(m.step for m in callback.client.get_metric_history(run_id, key))


@pytest.fixture
def tracking(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("quickstart")
    parent = client.create_run(experiment).info.run_id
    return uri, parent


def describe(config: dict) -> tuple[dict, dict]:
    return dict(config), {}  # module level: Tune pickles the callback with it


def new_callback(uri: str, parent: str, tmp_path: Path):
    from flare_ray.tracking.callback import MLflowTrialCallback

    return MLflowTrialCallback(uri, parent, "jav", "validation/macro_f1", "max", str(tmp_path), describe, search="s")


_REPORTS = iter(range(1, 10**6))


def epoch(n: int) -> dict:
    """An epoch's result as Tune hands it over; an epoch trained again scores a little differently, later."""
    report = next(_REPORTS)
    return {"epoch": n, "validation/macro_f1": 10.0 * n + report / 100, "train/loss": 1.0 / n, "timestamp": report}


def test_a_trial_restarted_in_the_same_sweep_logs_each_epoch_once(tracking, tmp_path):
    callback = new_callback(*tracking, tmp_path)
    for n in (1, 2, 3, 2, 3, 4):  # restarted from its epoch-1 checkpoint (its newer ones were damaged)
        callback.on_trial_result(0, [], trial(), epoch(n))
    callback.on_trial_result(0, [], trial(), {"epoch": 4, "final": True, "test/macro_f1": 50.0, "best_epoch": 4})
    callback.on_trial_result(0, [], trial(), {"epoch": 4, "final": True, "test/macro_f1": 50.0, "best_epoch": 4})
    run_id = callback.run_id(trial())
    assert history(callback, run_id, "validation/macro_f1") == [1, 2, 3, 4]
    assert history(callback, run_id, "test/macro_f1") == [4]
    first = {m.step: m.value for m in callback.client.get_metric_history(run_id, "validation/macro_f1")}
    assert first[2] < first[3] < 30.1  # as first logged


def test_a_resumed_sweep_logs_only_the_epochs_its_runs_do_not_hold(tracking, tmp_path):
    """--resume after a killed driver: the callback comes back from Tune's saved state; a trial reports again
    the epochs after the checkpoint it continues from, which its run may already hold."""
    callback = new_callback(*tracking, tmp_path)
    for n in (1, 2, 3):
        callback.on_trial_result(0, [], trial(), epoch(n))
    callback.flush()
    resumed = pickle.loads(pickle.dumps(callback))  # as Tune restores its callbacks from tuner.pkl
    for n in (2, 3, 4, 5):
        resumed.on_trial_result(0, [], trial(), epoch(n))
    run_id = resumed.run_id(trial())
    assert run_id == callback.run_id(trial())
    assert history(resumed, run_id, "validation/macro_f1") == [1, 2, 3, 4, 5]
    assert history(resumed, run_id, "train/loss") == [1, 2, 3, 4, 5]


# -- a result lost between its checkpoint and the driver reaches Tune, ASHA, the console and MLflow once -----------


class Died(Exception):
    """The trial's process dies: the result it was sending never reaches the driver."""


def run_recipe(experiment, run_folder: Path, monkeypatch, die_at: int | None = None) -> tuple[list[dict], dict | None]:
    """One start of a single-worker trial's recipe, in this process, against a fake of Ray's side on local
    storage: a report's checkpoint moves into the run's folder (as Tune persists it), then its result is sent;
    with ``die_at`` the process dies right after that epoch's checkpoint reached storage. The results that
    reached the driver, and the one lost."""
    import shutil

    from flare_ray.training import loop
    from flare_ray.training.checkpoints import REPLAYED_KEY
    from flare_ray.training.inputs import TrialInput

    sent: list[dict] = []
    lost: list[dict] = []

    def report(metrics, checkpoint=None):
        if checkpoint is not None:
            shutil.move(str(checkpoint), run_folder / f"checkpoint_{len(list(run_folder.iterdir())):06d}")
        if metrics.get("epoch") == die_at and not metrics.get(REPLAYED_KEY):
            lost.append(dict(metrics))
            raise Died
        sent.append(dict(metrics))

    monkeypatch.setattr(session, "report", report)
    with session.in_tune_trial():
        try:
            loop.train_loop_per_worker(TrialInput(experiment, "jav"))
        except Died:
            pass
    return sent, (lost or [None])[0]


@pytest.fixture(scope="module")
def lost_epoch(tmp_path_factory):
    """A 3-epoch trial whose process dies after epoch 2's checkpoint reached storage, then its restart: the
    results that reached the driver (``first``: epoch 1), what the restart sent, epoch 2's result as the first
    start computed it, and the checkpoint the restart continued from."""
    from flare_ray.experiment import load_experiment
    from tests.helpers import QUICKSTART

    tmp_path = tmp_path_factory.mktemp("lost_epoch")
    run_folder = tmp_path / "run_trial_0"
    run_folder.mkdir()
    experiment = load_experiment(QUICKSTART, [f"storage_path={tmp_path / 'storage'}", "search.space={}"])
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(session, "_ray_checkpoint", lambda: (None, pyarrow.fs.LocalFileSystem(), str(run_folder)))
        first, lost = run_recipe(experiment, run_folder, monkeypatch, die_at=2)
        records = {c: json.loads((c / TRIAL_CONFIG_NAME).read_text()) for c in run_folder.iterdir()}
        (stored,) = [c for c, record in records.items() if record["trained_epochs"] == 2]
        again, _ = run_recipe(experiment, run_folder, monkeypatch)
    return SimpleNamespace(first=first, again=again, lost=lost, stored=stored, epochs=experiment.training.epochs)


def test_a_restart_reports_the_epochs_its_checkpoint_holds_again_as_first_reported(lost_epoch):
    """Epoch 2's checkpoint reached storage, its result did not (the process died between the two): the restart
    continues after epoch 2 and first reports epochs 1 and 2 again, marked ``replayed``, as first computed, the
    last naming the checkpoint it continues from; nothing is trained twice."""
    assert [r["epoch"] for r in lost_epoch.first] == [1]
    again = lost_epoch.again
    assert [(r["epoch"], r.get("replayed"), bool(r.get("final"))) for r in again] == [
        (1, 1, False),
        (2, 1, False),
        (3, None, False),
        (3, None, True),
    ]
    assert {k: v for k, v in again[0].items() if k != "replayed"} == lost_epoch.first[0]
    assert {k: v for k, v in again[1].items() if k not in ("replayed", "replayed_checkpoint")} == lost_epoch.lost
    assert "replayed_checkpoint" not in again[0] and again[1]["replayed_checkpoint"] == str(lost_epoch.stored)
    assert again[2]["resumed_from_epoch"] == 2


def test_a_restarted_trial_accounts_for_the_time_of_its_first_start(lost_epoch):
    """The restart's time figures carry on those of the checkpoint it continues from (epoch 2's, as first
    computed), epoch 3's steps on top; its phases still add up to its wall time."""
    from flare_ray.training.timing import PHASES

    lost, final = lost_epoch.lost, lost_epoch.again[-1]
    assert all(final[f"time/{phase}"] >= lost[f"time/{phase}"] for phase in (*PHASES, "wall"))
    assert final["time/train_steps"] > lost["time/train_steps"]
    assert sum(final[f"time/{phase}"] for phase in (*PHASES, "other")) == pytest.approx(final["time/wall"])


def deliver(results: list[dict], callbacks, scheduler, trial) -> list[str]:
    """Results as Tune's loop hands them out, one by one: the scheduler's decision, the callbacks, then the
    result becomes the trial's last (``Trial.update_last_result``). The decisions."""
    decisions = []
    for result in results:
        decisions.append(scheduler.on_trial_result(None, trial, result))
        for callback in callbacks:
            callback.on_trial_result(0, [], trial, dict(result))
        trial.last_result = result
    return decisions


def asha(trial, epochs: int):
    """The search's ASHA (time_attr epoch, max_t epochs + 1; the quickstart's reduction factor: rungs at epochs
    1 and 2), with the trial and another, worse one at every rung (so the trial is never stopped)."""
    from ray.tune.schedulers import ASHAScheduler

    scheduler = ASHAScheduler(
        time_attr="epoch",
        metric="validation/macro_f1",
        mode="max",
        max_t=epochs + 1,
        grace_period=1,
        reduction_factor=2,
    )
    other = SimpleNamespace(trial_id="other")
    for t in (other, trial):
        scheduler.on_trial_add(None, t)
    for n in range(1, epochs + 1):
        scheduler.on_trial_result(None, other, {"epoch": n, "validation/macro_f1": -1.0})
    return scheduler


def rungs(scheduler, trial) -> dict[float, float]:
    """The score each rung of ASHA recorded for the trial (what later trials are cut against)."""
    (bracket,) = scheduler._brackets
    return {milestone: recorded[trial.trial_id] for milestone, recorded in bracket._rungs if trial.trial_id in recorded}


@pytest.mark.parametrize("arrived", [False, True], ids=["epoch 2 lost", "epoch 2 arrived"])
def test_each_epoch_reaches_asha_the_console_and_mlflow_once_after_a_restart(lost_epoch, tracking, tmp_path, arrived):
    """The driver got epoch 1 (and, where the process died after sending it, epoch 2), then the restart's
    results: MLflow's curves hold each epoch once, as first computed; the console prints each epoch once (the
    one it had not shown, saying it comes again); ASHA records the trial at each rung as an uninterrupted run
    would, and stops nothing."""
    from flare_ray.search.console import Console, SearchConsole

    uninterrupted = [*lost_epoch.first, lost_epoch.lost, *[r for r in lost_epoch.again if not r.get("replayed")]]
    got = [*lost_epoch.first, *([lost_epoch.lost] if arrived else []), *lost_epoch.again]
    assert [r["epoch"] for r in got if r.get("replayed")] == [1, 2]  # the results sent again, that each keeps once
    stream = __import__("io").StringIO()
    console = SearchConsole(Console(stream=stream), "s", "jav", lambda c: "flare", "validation/macro_f1", 3, str)
    callback, one = new_callback(*tracking, tmp_path), trial()
    one.last_result = {}
    scheduler = asha(one, lost_epoch.epochs)
    assert set(deliver(got, [callback, console], scheduler, one)) == {"CONTINUE"}
    reference = asha(trial("reference"), lost_epoch.epochs)
    deliver(uninterrupted, [], reference, trial("reference"))
    assert rungs(scheduler, one) == rungs(reference, trial("reference")) and len(rungs(scheduler, one)) == 2

    run_id = callback.run_id(one)
    assert history(callback, run_id, "validation/macro_f1") == [1, 2, 3]
    assert history(callback, run_id, "train/loss") == [1, 2, 3]
    logged = {m.step: m.value for m in callback.client.get_metric_history(run_id, "validation/macro_f1")}
    assert logged[2] == pytest.approx(lost_epoch.lost["validation/macro_f1"])
    lines = stream.getvalue().splitlines()
    assert [line.split("epoch ")[1][:3] for line in lines if "  epoch " in line] == ["1/3", "2/3", "3/3"]
    (epoch_two,) = [line for line in lines if "epoch 2/3" in line]
    assert ("reported again after a restart" in epoch_two) != arrived
    assert sum("done:" in line for line in lines) == 1


def test_a_trial_stopped_on_a_result_sent_again_keeps_the_checkpoint_it_continued_from(tracking, tmp_path):
    """ASHA may stop a restarted trial on the result it had lost (sent again, with no new checkpoint): its MLflow
    run takes its adapter from the checkpoint the restart continued from, which that result names (Tune may not
    know it: in a resumed sweep the callback has seen no checkpoint of the trial at all)."""
    stored = checkpoint(tmp_path / "run_trial_0" / "checkpoint_000001", trained=2, best=2)
    callback, one = new_callback(*tracking, tmp_path), trial()
    callback.on_trial_result(0, [], one, {**epoch(2), "replayed": 1, "replayed_checkpoint": str(stored)})
    callback.on_trial_complete(0, [], one)
    callback.flush()
    run_id = callback.run_id(one)
    assert callback.client.get_run(run_id).data.tags["best_checkpoint"] == str(stored)
    assert "adapter/adapter_model.safetensors" in {a.path for a in callback.client.list_artifacts(run_id, "adapter")}
