"""Small builders shared by the tests (unit and e2e); the sweep and Ray-cluster ones are in ``sweeps.py``."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Callable, Iterator
from unittest import mock

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification, AutoTokenizer

from flare_ray.fusion import FlareConfig, get_flare_model

TESTS = Path(__file__).resolve().parent  # tests/: configs/, data/, schemas/ beside unit/ and e2e/
REPO = TESTS.parent
QUICKSTART = TESTS / "configs" / "small-flare-search.yaml"  # the small FLARE search (TPE + ASHA) the tests build on

# family -> (tiny architecture, transformers auto class, extra from_pretrained kwargs)
FAMILIES = {
    "encoder": ("xlm-roberta", AutoModelForSequenceClassification, {"num_labels": 3}),
    "encoder_decoder": ("mt5", AutoModelForSeq2SeqLM, {}),
    "decoder": ("llama", AutoModelForCausalLM, {}),
    "decoder_gemma2": ("gemma2", AutoModelForCausalLM, {}),
}
FUSIONS = ["add", "mul", "add_relu", "cross_attention"]

TARGET = ["Saya suka makanan ini, enak sekali!", "Pelayanan lambat dan mahal."]
SOURCE = ["I like this food, it is very tasty!", "Slow, expensive."]


def load_base(tiny_path, family: str, seed: int = 0, **kwargs):
    arch, auto, extra = FAMILIES[family]
    torch.manual_seed(seed)  # the classification head of the encoder is freshly initialised
    model = auto.from_pretrained(tiny_path(arch), **extra, **kwargs)
    return model.eval(), AutoTokenizer.from_pretrained(tiny_path(arch))


def flare(tiny_path, family: str, fusion: str = "add_relu", lora: dict | None = None, seed: int = 0, **config):
    model, tok = load_base(tiny_path, family, seed=seed)
    lora_config = None
    if lora is not None:
        from flare_ray.fusion import default_task_type

        lora_config = LoraConfig(task_type=default_task_type(model), **lora)
    torch.manual_seed(seed)
    fm = get_flare_model(model, FlareConfig(fusion=fusion, **config), lora_config)
    return fm.eval(), tok


@torch.no_grad()
def randomize_lora(fm, seed: int = 1, scale: float = 0.5) -> None:
    """Give every LoRA B a non-zero value (peft initialises B to zero)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in fm.named_parameters():
        if "lora_B" in name or "lora_A" in name:
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def batches(tok, target=TARGET, source=SOURCE):
    t = tok(list(target), padding=True, return_tensors="pt")
    s = tok(list(source), padding=True, return_tensors="pt")
    return t, s


def task_kwargs(family: str, tok, t) -> dict:
    """Labels for one training step of each family on the fixed batch."""
    if family == "encoder":
        return {"labels": torch.tensor([0, 2])}
    if family == "encoder_decoder":
        return {"labels": tok(["positive", "negative"], padding=True, return_tensors="pt").input_ids}
    labels = t.input_ids.clone()
    labels[t.attention_mask == 0] = -100
    labels[:, : labels.shape[1] // 2] = -100  # the first half plays the prompt
    return {"labels": labels}


def source_kwargs(s) -> dict:
    return {"source_input_ids": s.input_ids, "source_attention_mask": s.attention_mask}


def help_text(main, parser, capsys) -> str:
    """A command's ``--help``: it exits 0 and every option has a help text; what it printed."""
    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    for action in parser._actions:
        assert action.help, action.dest
    return capsys.readouterr().out


@contextlib.contextmanager
def counted_validations() -> Iterator[Callable[[], int]]:
    """Within: every experiment config validated in this process is counted (each one goes through
    ``ExperimentConfig.model_validate``: a YAML loaded, a sample written in, a checkpoint's record read).
    Yields how many so far."""
    from flare_ray.experiment import ExperimentConfig

    validate, count = ExperimentConfig.model_validate, 0

    def counting(*args, **kwargs):
        nonlocal count
        count += 1
        return validate(*args, **kwargs)

    with mock.patch.object(ExperimentConfig, "model_validate", counting):
        yield lambda: count


def trial_trainer(config, language: str, name: str, loop: Callable | None = None):
    """The Ray Train run of one trial (whatever its number of workers), as a trial driver starts it; its
    workers run ``loop`` (the trial's entry, :func:`flare_ray.search.trial.train_entry`) on its
    :class:`~flare_ray.training.inputs.TrialInput`."""
    from flare_ray.search.trial import train_entry, trainer
    from flare_ray.storage import join
    from flare_ray.training.inputs import TrialInput

    return trainer(
        config.scaling,
        loop or train_entry,
        TrialInput(config, language),
        name,
        join(config.storage_path, "train"),
        config.search.worker_max_failures,
    )


def train_steps(fm, batch: dict, steps: int, lr: float = 1e-2) -> list[float]:
    """``steps`` AdamW steps of ``fm`` on one batch; the loss of each."""
    params = [p for p in fm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    fm.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = fm(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def no_model(*args, **kwargs):
    """A stand-in for what would load or run a model: a test that must get by without one fails if it is called."""
    raise AssertionError("a model would be loaded here")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def served(command: list[str], url: str, env: dict[str, str], log: Path, timeout: float = 60):
    """A local server, started from ``command`` and returned once ``url`` answers; stopped on exit
    (``benchmarks/common.py``'s, which the benchmarks start theirs with)."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    import common

    return common.served(command, url, env, log, timeout)


TINY_EXPERIMENT = """\
name: t
model:
  name_or_path: "tiny:xlm-roberta"
task: {name: nusax, languages: [jav]}
training: {epochs: 2}
"""
"""The smallest experiment YAML: a tiny encoder on NusaX Javanese (tests of what loading checks write
variations of it)."""


def write_experiment(tmp_path: Path, text: str) -> Path:
    """``text`` (dedented) as ``<tmp_path>/exp.yaml``."""
    import textwrap

    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def refuse_ray(tmp_path: Path, monkeypatch) -> None:
    """Ray cannot start (a test that reaches ``ray.init`` fails), and a sweep would start a local Ray of its own:
    no ``RAY_ADDRESS``, no cluster address left by ``ray start`` (a private ``RAY_TMPDIR``), no tracking URI."""
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", no_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray-tmp"))


@contextlib.contextmanager
def chromium(profile: Path, size: str = "1400,900"):
    """Debian's headless Chromium (installed by .ci/run) on a fresh profile (``profile``: a new folder)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert not profile.exists()  # fresh: no local storage (MLflow's UI keeps its choices there)
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={size}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()
