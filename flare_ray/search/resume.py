"""What ``--resume`` trusts: a search's folder ``<storage>/<search>/`` holds Ray Tune's saved state, which Tune
unpickles on restore (``tuner.pkl``, the trials in ``experiment_state-*.json``, the searcher's and the
callbacks' ``*.pkl``/``*.json``), so whoever can write that folder (a shared ``s3://`` bucket) could run code
on the driver. Before anything reads it, every state file is checked against an HMAC-SHA256 this sweep wrote
when Tune saved it, keyed by a secret that never lives in the storage: ``FLARE_RAY_STATE_KEY`` (clusters, CI),
else ``<config dir>/flare_ray/state-key`` (``$XDG_CONFIG_HOME`` or ``~/.config``), made on first use, mode 0600.

* **What is signed.** Every file at the top level of the search's folder (Tune reads its state from there
  alone), but for the signatures file itself and hidden files (Tune's temporary files; none of its readers
  match a name that starts with a dot). Each HMAC covers the search's name, the file's name and its bytes, so
  a signed file cannot stand in for another. The signatures file, :data:`SIGNATURES`, keeps the last
  :data:`KEPT` HMACs of each file: Tune uploads its state in the background, file by file, and a driver
  killed during an upload leaves a mix of the previous save and the new one, each signed.
* **When.** The project's own files (:data:`PLAN`) and ``tuner.pkl`` as the search starts; Tune's state as
  Tune saves it: :class:`~flare_ray.search.concurrent.SearchControl`'s ``get_state`` (Tune asks every
  callback for its state after it has written the experiment and searcher state to its local staging folder,
  and before it uploads that folder to the storage) signs the staged files and writes the signatures straight
  to the storage, so a signature is there before the file it signs.
* **What a search is.** :data:`PLAN` records what defines the search's trials (its grid, space, seeds,
  ``num_samples``, the model, task, method and training): a ``--resume`` whose plan differs is refused with
  the keys that changed, before the parent run is touched. Where the sweep runs and how fast (``storage_path``,
  ``tracking``, the resources in ``scaling`` and ``translation``, ``max_concurrent_trials``, the retries, the
  source cache's size) may change.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

from flare_ray.secrets import redact
from flare_ray.storage import join

from .plan import Search

log = logging.getLogger(__name__)

KEY_ENV = "FLARE_RAY_STATE_KEY"
SIGNATURES = "flare_ray-state.hmac"  # JSON; not *.json, which Tune would copy to its staging folder and back
PLAN = "flare_ray-search.plan"  # JSON, likewise
TUNER_PKL = "tuner.pkl"
KEPT = 16  # HMACs kept per file: saves whose background upload may not have landed yet
FORMAT = 1
# Not part of what a search is: where it runs, how fast, how often it retries.
UNPLANNED = (
    ("storage_path",),
    ("tracking",),
    ("scaling", "use_gpu"),
    ("scaling", "gpus_per_worker"),
    ("scaling", "cpus_per_worker"),
    ("scaling", "ray_train"),
    ("search", "max_concurrent_trials"),
    ("search", "max_failures"),
    ("search", "worker_max_failures"),
    ("training", "source_cache_gb"),
    ("translation", "batch_size"),
    ("translation", "concurrency"),
    ("translation", "num_cpus"),
    ("translation", "num_gpus"),
)
# Keys added after plans were first saved: left out of a plan at their default, so that a sweep saved before them
# resumes with the same plan.
UNPLANNED_AT_DEFAULT = (  # keys newer than some saved plans: left out where they keep their default (issue 31)
    (("model", "attn_implementation"), None),
    (("training", "compile"), False),
    (("training", "group_by_length"), False),
    (("training", "padding_free"), False),
)
_WHAT_TO_DO = (
    f"run the command without --resume under a new name (--set name=...), or set {KEY_ENV} to the key that wrote it"
)


class ResumeRefused(ValueError):
    """``--resume`` would read state this sweep did not write, or continue searches planned differently: refused
    before anything starts or changes (the CLI's exit status 2)."""


# -- the key ---------------------------------------------------------------------------------------------------
_key_lock = threading.Lock()


def key_file() -> Path:
    """Where the key lives on this machine when ``FLARE_RAY_STATE_KEY`` is not set."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "flare_ray" / "state-key"


def state_key() -> bytes:
    """The secret that signs Tune's state: ``FLARE_RAY_STATE_KEY``, else this machine's key file (made on first
    use, readable by its owner only). Never written to the storage."""
    value = os.environ.get(KEY_ENV, "")
    if value:
        return value.encode()
    path = key_file()
    with _key_lock:  # the searches' threads sign at once: one of them makes the file
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it meanwhile
                pass
            else:
                with os.fdopen(descriptor, "w") as f:
                    f.write(secrets.token_hex(32) + "\n")
        key = path.read_text().strip().encode()
    if len(key) < 32:
        raise ValueError(f"{path} holds no key of 32 characters or more: delete it to make a new one, or set {KEY_ENV}")
    return key


def _where_the_key_is() -> str:
    return f"{KEY_ENV}" if os.environ.get(KEY_ENV) else f"the key in {key_file()} ({KEY_ENV} is not set)"


def signature(key: bytes, search: str, name: str, content: bytes) -> str:
    """The HMAC of one state file: it names the search and the file, so a signed file signs nothing else."""
    message = b"\0".join([b"flare_ray-state-v1", search.encode(), name.encode(), content])
    return hmac.new(key, message, hashlib.sha256).hexdigest()


# -- a search's folder: local or a URI, through pyarrow as Tune reads it ----------------------------------------
class Folder:
    """The top level of a search's folder on its filesystem (pyarrow's: a local disk, S3, GCS)."""

    def __init__(self, filesystem, path: str, shown: str | None = None) -> None:
        self.filesystem, self.path = filesystem, path.rstrip("/")
        self.shown = redact(shown or path)

    @classmethod
    def at(cls, location: str) -> Folder:
        """The folder at a local path or a URI (``file://``, ``s3://``, ``gs://``)."""
        import pyarrow.fs

        if "://" in location:
            filesystem, path = pyarrow.fs.FileSystem.from_uri(location)
            return cls(filesystem, path, location)
        return cls(pyarrow.fs.LocalFileSystem(), str(Path(location).expanduser().absolute()), location)

    def files(self) -> list[str]:
        """The names of the files at its top level (not hidden ones; none when it does not exist)."""
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self.path, recursive=False, allow_not_found=True)
        infos = self.filesystem.get_file_info(selector)
        return sorted(
            i.base_name for i in infos if i.type == pyarrow.fs.FileType.File and not i.base_name.startswith(".")
        )

    def folders(self) -> list[str]:
        import pyarrow.fs

        selector = pyarrow.fs.FileSelector(self.path, recursive=False, allow_not_found=True)
        return sorted(
            i.base_name for i in self.filesystem.get_file_info(selector) if i.type == pyarrow.fs.FileType.Directory
        )

    def read(self, name: str) -> bytes:
        with self.filesystem.open_input_stream(f"{self.path}/{name}") as stream:
            return stream.read()

    def write(self, name: str, content: bytes) -> None:
        """Replace a file whole: through a hidden temporary file on a local disk, in one put on an object store."""
        import pyarrow.fs

        self.filesystem.create_dir(self.path, recursive=True)
        final = f"{self.path}/{name}"
        if isinstance(self.filesystem, pyarrow.fs.LocalFileSystem):
            partial = f"{self.path}/.{name}.partial"
            with self.filesystem.open_output_stream(partial) as stream:
                stream.write(content)
            self.filesystem.move(partial, final)
        else:
            with self.filesystem.open_output_stream(final) as stream:
                stream.write(content)

    def where(self, name: str) -> str:
        return f"{self.shown}/{name}"


def _signed(folder: Folder) -> dict[str, list[str]] | None:
    """The HMACs the signatures file holds, per file; None where it is missing or unreadable."""
    try:
        files = json.loads(folder.read(SIGNATURES))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, dict):
        return None
    return {str(k): [str(m) for m in v] for k, v in files.items() if isinstance(v, list)}


def sign(folder: Folder, search: str, contents: dict[str, bytes]) -> None:
    """Add the HMACs of ``contents`` (file name -> bytes) to the folder's signatures, newest first."""
    key = state_key()
    files = _signed(folder) or {}
    for name, content in contents.items():
        mac = signature(key, search, name, content)
        files[name] = [mac, *[m for m in files.get(name, []) if m != mac]][:KEPT]
    document = {"format": FORMAT, "search": search, "files": files}
    folder.write(SIGNATURES, json.dumps(document, indent=1, sort_keys=True).encode())


def sign_stored(folder: Folder, search: str, names: Iterable[str]) -> None:
    """Sign files as they are in the folder (``tuner.pkl``, which Tune writes straight to the storage)."""
    sign(folder, search, {name: folder.read(name) for name in names})


def sign_staged(storage) -> None:
    """Sign the state Tune has just written to its local staging folder and is about to upload (``storage``:
    the ``TuneController``'s ``StorageContext``): every ``*.json`` and ``*.pkl`` at its top level, as Tune
    uploads them and reads them back on restore."""
    staging = Path(storage.experiment_driver_staging_path)
    contents = {
        p.name: p.read_bytes()
        for p in sorted(staging.glob("*"))
        if p.is_file() and not p.name.startswith(".") and p.suffix in (".json", ".pkl")
    }
    folder = Folder(storage.storage_filesystem, storage.experiment_fs_path)
    sign(folder, storage.experiment_dir_name, contents)


def state_problem(folder: Folder, search: str) -> str | None:
    """What in the folder this sweep did not sign with this key (None: every state file is as it wrote it)."""
    names = [n for n in folder.files() if n != SIGNATURES]
    if not names:
        return None
    signed = _signed(folder)
    if signed is None:
        return (
            f"{folder.where(SIGNATURES)} is missing or unreadable, so nothing in {folder.shown} (e.g. "
            f"{names[0]}) can be told to be what this sweep wrote"
        )
    key = state_key()
    for name in names:
        mac = signature(key, search, name, folder.read(name))
        if name not in signed:
            return (
                f"{folder.where(name)} was not written by this sweep: it has no signature (a file added to its state)"
            )
        if not any(hmac.compare_digest(mac, m) for m in signed[name]):
            return (
                f"{folder.where(name)} is not as this sweep wrote it with this key: its signature does not match "
                "(altered since, or written on another machine or with another key)"
            )
    return None


def has_saved_state(folder: Folder) -> bool:
    """Whether a search has state to resume: its ``tuner.pkl`` and at least one saved experiment state (a
    driver killed while the search set up leaves ``tuner.pkl`` alone: the search starts afresh)."""
    names = folder.files()
    return TUNER_PKL in names and any(n.startswith("experiment_state-") and n.endswith(".json") for n in names)


# -- what a search is --------------------------------------------------------------------------------------------
def search_plan(search: Search, stage1: Any = None) -> dict[str, Any]:
    """What defines a search's trials, as JSON (:data:`UNPLANNED` left out). ``stage1``: ``model.stage1`` as the
    user wrote it (``auto``), where the sweep has since written the trained folder in."""
    config = search.config.model_dump(mode="json")
    if stage1 is not None:
        config["model"]["stage1"] = stage1
    for path in UNPLANNED:
        parent = config
        for part in path[:-1]:
            parent = parent.get(part) or {}
        parent.pop(path[-1], None)
    for (section, key), default in UNPLANNED_AT_DEFAULT:
        if config[section].get(key, default) == default:
            config[section].pop(key, None)
    record = {
        "sweep": search.config.name,
        "search": search.name,
        "language": search.language,
        "cell": search.cell,
        "trials": search.expected_trials,
        "config": config,
    }
    return json.loads(json.dumps(record, sort_keys=True, default=str))


def write_plan(folder: Folder, plan: dict[str, Any]) -> None:
    folder.write(PLAN, json.dumps({"format": FORMAT, **plan}, indent=1, sort_keys=True).encode())


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def plan_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every key that differs (the config's keys as the YAML spells them)."""
    before = _flat({**{k: v for k, v in old.items() if k not in ("config", "format")}, **old.get("config", {})})
    after = _flat({**{k: v for k, v in new.items() if k not in ("config", "format")}, **new.get("config", {})})
    missing = object()
    lines = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key, missing), after.get(key, missing)
        if a != b:
            shown = ["(not set)" if v is missing else json.dumps(v) for v in (a, b)]
            lines.append(f"{key}: {shown[0]} -> {shown[1]}")
    return lines


# -- --resume ----------------------------------------------------------------------------------------------------
def check_resume(searches: list[Search], storage_path: str, say: Callable[[str], None], stage1: Any = None) -> None:
    """Before ``--resume`` reads any saved state: raise :class:`ResumeRefused` if a search's folder holds a file
    this sweep did not sign with this key, or was planned differently (or is no longer planned); say so where
    nothing was saved at all (the sweep starts afresh)."""
    sweep = searches[0].config.name if searches else ""
    planned = {s.name: s for s in searches}
    saved = {name: f for name in planned if has_saved_state(f := Folder.at(join(storage_path, name)))}
    for name, folder in saved.items():
        problem = state_problem(folder, name)
        if problem:
            raise ResumeRefused(
                f"--resume refused: {problem}. Ray Tune would unpickle the search's state, which runs any code it "
                f"holds, so it is read only as this sweep wrote it with {_where_the_key_is()}. Nothing was "
                f"started or changed; {_WHAT_TO_DO}"
            )
    changes: dict[str, list[str]] = {}
    for name, folder in saved.items():
        if PLAN not in folder.files():
            raise ResumeRefused(
                f"--resume refused: {folder.where(PLAN)} is missing: what search {name} was is not known, so it "
                f"cannot be continued. Nothing was started or changed; {_WHAT_TO_DO}"
            )
        old = json.loads(folder.read(PLAN))
        for line in plan_changes(old, search_plan(planned[name], stage1)):
            changes.setdefault(line, []).append(name)
    gone = _saved_elsewhere(storage_path, sweep, planned)
    if changes or gone:
        lines = [f"  {line}" for line in changes]
        lines += [f"  search {name}: saved, but this command plans no such search" for name in gone]
        raise ResumeRefused(
            f"--resume refused: sweep {sweep!r} was saved under {redact(storage_path)} with another plan; what "
            "changed (saved -> now):\n" + "\n".join(lines) + "\nNothing was started or changed, and its finished "
            "runs are left as they are: run the command as it was with --resume to continue it, or without "
            "--resume under a new name (--set name=...) to search the new plan"
        )
    if not saved:
        say(f"--resume: nothing was saved under {redact(storage_path)} for sweep {sweep!r}: starting afresh")


def _saved_elsewhere(storage_path: str, sweep: str, planned: dict[str, Search]) -> list[str]:
    """Searches of this sweep saved under the storage that the current command does not plan (a grid cell or a
    language removed): folders ``<sweep>-*`` whose signed plan names this sweep."""
    found = []
    for name in Folder.at(storage_path).folders():
        if name in planned or not name.startswith(f"{sweep}-"):
            continue
        folder = Folder.at(join(storage_path, name))
        if PLAN not in folder.files() or state_problem(folder, name):
            continue  # not this sweep's (or not signed by it): never read
        try:
            if json.loads(folder.read(PLAN)).get("sweep") == sweep and has_saved_state(folder):
                found.append(name)
        except (ValueError, AttributeError):
            continue
    return found
