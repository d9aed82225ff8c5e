"""Shared fixtures: tiny offline models (built once per session, no network)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from .hub_cache import fake_hub_cache

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Offline, the pre-flight checks look hub models up in the local cache: one holding the config.json of the
# hub models the shipped YAMLs name (set before huggingface_hub is imported: it reads HF_HUB_CACHE once).
os.environ["HF_HUB_CACHE"] = str(fake_hub_cache(Path(tempfile.mkdtemp(prefix="flare_ray-hub-cache-"))))


@pytest.fixture(scope="session", autouse=True)
def _quiet_transformers():
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """``tiny_path(arch)``: folder of the tiny ``arch`` checkpoint, built on first use."""
    from flare_ray.models.tiny import tiny_model_path

    root = tmp_path_factory.mktemp("tiny-models")
    return lambda arch: tiny_model_path(arch, cache_dir=root)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for the tests of one module (Train V2)."""
    import ray

    os.environ["RAY_TRAIN_V2_ENABLED"] = "1"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, ignore_reinit_error=True)
    yield
    ray.shutdown()
