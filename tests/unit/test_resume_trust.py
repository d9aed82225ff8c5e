"""What ``--resume`` trusts (flare_ray/search/resume.py): a search's saved state is read only if every file is as
this sweep signed it with a key that lives outside the storage, and only if the search is planned as it was;
the project's own state is JSON. No Ray cluster: the folders are made as a sweep makes them."""

from __future__ import annotations

import json
import os
import pickle
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import pyarrow.fs
import pytest

from flare_ray.experiment import load_experiment
from flare_ray.search import resume
from flare_ray.search.plan import plan_searches
from flare_ray.search.resume import (
    KEY_ENV,
    PLAN,
    SIGNATURES,
    TUNER_PKL,
    Folder,
    ResumeRefused,
    check_resume,
    search_plan,
    sign_staged,
    sign_stored,
    write_plan,
)
from tests.helpers import QUICKSTART

SESSION = "2025-01-01_00-00-00"


@pytest.fixture(autouse=True)
def config_home(tmp_path, monkeypatch) -> Path:
    """A config dir of the test's own (the key file is made there), and no key in the environment."""
    home = tmp_path / "config-home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv(KEY_ENV, raising=False)
    return home


class Payload:
    """A pickle that, once unpickled, creates ``marker``: what a hostile ``tuner.pkl`` would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def experiment(storage: Path, *overrides: str):
    return load_experiment(QUICKSTART, [f"storage_path={storage}", *overrides])


def staged_save(storage: Path, name: str, staging: Path, files: dict[str, bytes]) -> None:
    """What Tune does when it saves a search's state: write it to its staging folder, ask the callbacks for
    their state (signed there), then upload the staging folder to the storage."""
    staging.mkdir(parents=True, exist_ok=True)
    for file, content in files.items():
        (staging / file).write_bytes(content)
    context = SimpleNamespace(
        experiment_driver_staging_path=str(staging),
        storage_filesystem=pyarrow.fs.LocalFileSystem(),
        experiment_fs_path=str(storage / name),
        experiment_dir_name=name,
    )
    sign_staged(context)
    for file, content in files.items():  # the upload, after the signatures are in the storage
        (storage / name / file).write_bytes(content)


def saved_sweep(storage: Path, *overrides: str) -> list:
    """A sweep's searches as a run of it leaves them: plan and ``tuner.pkl`` signed as the search starts, then a
    save of Tune's state (experiment state, searcher state) signed as Tune makes it."""
    searches = plan_searches(experiment(storage, *overrides))
    for search in searches:
        folder = Folder.at(str(storage / search.name))
        write_plan(folder, search_plan(search))
        folder.write(TUNER_PKL, pickle.dumps({"tuner": search.name}))
        sign_stored(folder, search.name, [PLAN, TUNER_PKL])
        staged_save(
            storage,
            search.name,
            storage / "staging" / search.name,
            {
                f"experiment_state-{SESSION}.json": b'{"trial_data": []}',
                f"searcher-state-{SESSION}.pkl": pickle.dumps({"optuna": 1}),
            },
        )
    return searches


def refused(storage: Path, *overrides: str) -> str:
    with pytest.raises(ResumeRefused) as info:
        check_resume(plan_searches(experiment(storage, *overrides)), str(storage), print)
    return str(info.value)


# -- tampered state ------------------------------------------------------------------------------------------------
def test_a_tampered_tuner_pkl_is_refused_before_the_sweep_starts_and_never_runs(tmp_path, monkeypatch):
    from flare_ray.search import sweep
    from flare_ray.tracking import mlflow_runs

    storage = tmp_path / "storage"
    (search,) = saved_sweep(storage)
    marker = tmp_path / "payload-ran"
    (storage / search.name / TUNER_PKL).write_bytes(pickle.dumps(Payload(marker)))

    def touched(*args, **kwargs):
        raise AssertionError("the sweep went on past the check: its parent run was touched")

    monkeypatch.setattr(mlflow_runs, "connect", touched)
    monkeypatch.setattr(mlflow_runs, "start_parent_run", touched)
    with pytest.raises(ResumeRefused) as info:
        sweep.run_sweep(experiment(storage), resume=True)
    message = str(info.value)
    assert f"{storage / search.name}/tuner.pkl is not as this sweep wrote it with this key" in message
    assert "Nothing was started or changed" in message and "--set name=" in message and KEY_ENV in message
    assert not marker.exists()
    assert sweep.ResumeRefused is ResumeRefused  # the CLI catches it from the sweep's module


def test_the_projects_own_state_is_json_and_refused_when_altered(tmp_path):
    from ray.tune.search import Searcher

    from flare_ray.search.searches import GridCells, SeedRepeater

    class Fixed(Searcher):
        def suggest(self, trial_id):
            return {"x": 1}

        def save(self, path):
            Path(path).write_text("{}")

    grid = GridCells([{"training.learning_rate": 0.1}, {"training.learning_rate": 0.2}], [0, 1])
    grid.suggest("a")
    grid.save(str(tmp_path / "grid"))
    assert json.loads((tmp_path / "grid").read_text()) == {"made": 1}
    assert GridCells.CKPT_FILE_TMPL.endswith(".json")
    repeater = SeedRepeater(Fixed(metric="m", mode="max"), repeat=2)
    repeater.suggest("t0")
    repeater.save(str(tmp_path / "searcher"))
    groups = json.loads((tmp_path / "searcher.groups").read_text())
    assert groups["groups"][0]["config"] == {"x": 1} and groups["trial_to_group"] == {"t0": 0}

    storage = tmp_path / "storage"
    (search,) = saved_sweep(storage)
    folder = storage / search.name
    state = folder / f"searcher-state-{SESSION}.json"
    staged_save(storage, search.name, storage / "staging" / search.name, {state.name: b'{"made": 3}'})
    check_resume([search], str(storage), print)  # as it was signed: accepted
    state.write_text('{"made": 0}')  # run every trial again
    assert f"{state} is not as this sweep wrote it with this key" in refused(storage)
    state.write_text('{"made": 3}')
    plan = json.loads((folder / PLAN).read_text())
    plan["config"]["search"]["num_samples"] = 1  # a plan edited to hide a change
    (folder / PLAN).write_text(json.dumps(plan))
    assert f"{folder / PLAN} is not as this sweep wrote it" in refused(storage)


def test_missing_signatures_and_unsigned_state_files_are_refused(tmp_path):
    storage = tmp_path / "storage"
    (search,) = saved_sweep(storage)
    folder = storage / search.name
    extra = folder / f"callback-states-{SESSION}.pkl"  # Tune unpickles it where it finds one
    extra.write_bytes(pickle.dumps({"callbacks": 1}))
    assert f"{extra} was not written by this sweep: it has no signature" in refused(storage)
    extra.unlink()
    (folder / ".hidden-tmp.pkl").write_bytes(b"never read by Tune")  # hidden: Tune's temporary files
    (folder / "run_trial_00000").mkdir()  # a trial's folder: Tune unpickles nothing in it
    check_resume([search], str(storage), print)
    (folder / SIGNATURES).unlink()
    message = refused(storage)
    assert f"{folder / SIGNATURES} is missing or unreadable" in message and "Nothing was started" in message


def test_a_save_is_signed_before_its_upload_so_a_killed_driver_leaves_a_resumable_state(tmp_path):
    """Tune uploads its staging folder file by file after every save: whichever version of each file reached the
    storage when the driver died, it was signed first."""
    from ray.tune.execution.tune_controller import TuneController

    from flare_ray.search.concurrent import SearchControl

    storage = tmp_path / "storage"
    (search,) = saved_sweep(storage)
    staging = storage / "staging" / search.name
    context = SimpleNamespace(
        experiment_driver_staging_path=str(staging),
        storage_filesystem=pyarrow.fs.LocalFileSystem(),
        experiment_fs_path=str(storage / search.name),
        experiment_dir_name=search.name,
    )

    class Controller(TuneController):  # Tune's save: write the staging folder, then ask callbacks for their state
        def __init__(self) -> None:
            self._storage = context

        def save_to_dir(self) -> None:
            (staging / f"experiment_state-{SESSION}.json").write_text('{"trial_data": [1]}')
            control.get_state()

    control = SearchControl(search.name, signs=True)
    Controller().save_to_dir()
    check_resume([search], str(storage), print)  # not uploaded yet: the previous version is still signed
    (storage / search.name / f"experiment_state-{SESSION}.json").write_text('{"trial_data": [1]}')
    check_resume([search], str(storage), print)  # uploaded
    assert pickle.dumps(control) and "key" not in json.dumps(vars(control), default=str)  # in tuner.pkl: no key


# -- the key -------------------------------------------------------------------------------------------------------
def test_the_key_is_made_once_readable_by_its_owner_only_and_never_stored_with_the_state(tmp_path, config_home):
    storage = tmp_path / "storage"
    saved_sweep(storage)
    key_file = config_home / "flare_ray" / "state-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    key = key_file.read_text().strip()
    assert len(key) == 64 and resume.state_key() == key.encode()  # made once, then read
    stored = b"".join(p.read_bytes() for p in storage.rglob("*") if p.is_file())
    assert key.encode() not in stored
    key_file.write_text("\n")  # emptied: never an HMAC keyed by nothing
    with pytest.raises(ValueError, match=f"{key_file} holds no key"):
        resume.state_key()


def test_the_key_may_come_from_the_environment(tmp_path, config_home, monkeypatch):
    storage = tmp_path / "storage"
    monkeypatch.setenv(KEY_ENV, "the cluster's key, 32 characters long")
    (search,) = saved_sweep(storage)
    assert not (config_home / "flare_ray" / "state-key").exists()
    check_resume([search], str(storage), print)
    monkeypatch.setenv(KEY_ENV, "another key")
    message = refused(storage)
    assert "written on another machine or with another key" in message and f"with {KEY_ENV}" in message
    monkeypatch.delenv(KEY_ENV)  # this machine's key file: not the one that signed
    assert "state-key" in refused(storage)


def test_threads_that_sign_at_once_make_one_key(config_home):
    keys = []
    threads = [threading.Thread(target=lambda: keys.append(resume.state_key())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(keys)) == 1 and keys[0] == (config_home / "flare_ray" / "state-key").read_bytes().strip()


# -- a changed plan --------------------------------------------------------------------------------------------------
def test_a_changed_space_or_grid_is_refused_naming_the_keys_that_changed(tmp_path):
    storage = tmp_path / "storage"
    saved_sweep(storage)
    message = refused(storage, "search.space.training.learning_rate.high=0.1")
    assert "search.space.training.learning_rate.high: 0.05 -> 0.1" in message
    assert "finished runs are left as they are" in message and "Nothing was started or changed" in message
    message = refused(
        storage,
        "search.space={}",
        "search.num_samples=1",
        "search.scheduler=null",
        "search.grid={training.seed: [1, 2]}",
    )
    assert "search.grid.training.seed: (not set) -> [1, 2]" in message and "trials: 4 -> 2" in message
    message = refused(storage, "task.languages=[jav, sun]")  # sun has no saved state: compared for jav
    assert 'task.languages: ["jav"] -> ["jav", "sun"]' in message
    # where and how fast it runs may change
    check_resume(
        plan_searches(experiment(storage, "search.max_concurrent_trials=1", "scaling.cpus_per_worker=1")),
        str(storage),
        print,
    )


def test_a_saved_search_that_is_no_longer_planned_is_refused(tmp_path):
    storage = tmp_path / "storage"
    saved_sweep(storage, "task.languages=[jav, sun]")
    message = refused(storage, "task.languages=[jav]")
    assert "search quickstart-sun: saved, but this command plans no such search" in message


def test_resume_with_nothing_saved_says_so(tmp_path, capsys):
    storage = tmp_path / "storage"
    check_resume(plan_searches(experiment(storage)), str(storage), print)
    assert (
        f"--resume: nothing was saved under {storage} for sweep 'quickstart': starting afresh"
        in capsys.readouterr().out
    )
    folder = Folder.at(str(storage / "quickstart-jav"))  # a driver killed as the search set up: tuner.pkl alone
    folder.write(TUNER_PKL, pickle.dumps(Payload(storage / "ran")))
    check_resume(plan_searches(experiment(storage)), str(storage), print)  # never read: it starts afresh
    assert "starting afresh" in capsys.readouterr().out and not (storage / "ran").exists()


def test_folders_through_pyarrow_list_only_the_top_level_and_skip_hidden_files(tmp_path):
    folder = Folder.at(str(tmp_path / "search"))
    folder.write("a.json", b"{}")
    (tmp_path / "search" / "sub").mkdir()
    (tmp_path / "search" / "sub" / "b.pkl").write_bytes(b"x")
    (tmp_path / "search" / ".c.pkl").write_bytes(b"x")
    assert folder.files() == ["a.json"] and folder.read("a.json") == b"{}"
    assert Folder.at(f"file://{tmp_path}/search").files() == ["a.json"]
    assert not [p for p in os.listdir(tmp_path / "search") if p.endswith(".partial")]
