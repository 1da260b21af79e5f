"""Shared fixtures: tiny offline pipelines (random weights, built in seconds, nothing downloaded)."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_cogvideox_dir(tmp_path_factory):
    """A saved tiny CogVideoX pipeline folder (DDIM, sincos positions like CogVideoX-2b)."""
    from receler.tiny import save_tiny_pipeline

    return save_tiny_pipeline("cogvideox", tmp_path_factory.mktemp("tiny") / "cogvideox", seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """``tiny_model_dir(family)``: a saved tiny pipeline folder of that family, built once per session."""
    from receler.tiny import save_tiny_pipeline

    folders = {}

    def get(family):
        if family not in folders:
            folders[family] = save_tiny_pipeline(family, tmp_path_factory.mktemp("tiny") / family, seed=0)
        return folders[family]

    return get


@pytest.fixture
def tiny_cogvideox():
    """A fresh in-memory tiny CogVideoX pipeline (each test may wrap or train it freely)."""
    from receler.tiny.cogvideox import build_tiny_cogvideox

    return build_tiny_cogvideox(seed=0)
