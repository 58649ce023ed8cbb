"""Shared pytest fixtures: offline tiny encoders built once per session (see tests/tiny_models.py)."""

import os
import runpy
import sys
from pathlib import Path

# Must be set before transformers / huggingface_hub are imported: the Hub is unreachable, fail fast instead of
# retrying, and keep the Rust tokenizers thread pool from clashing with forked DataLoader / accelerate workers.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Tiny models gain nothing from several threads, and OpenMP threads that spin-wait on a busy 2-core box make every
# small op slow; one thread per process (subprocesses inherit it) keeps the suite fast and steady.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import tiny_models` works with or without tests/__init__.py
import tiny_models

# The real datasets live beside the checkout, in ../shared/data.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each in-process run starts from a clean state."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


@pytest.fixture
def run_as_main(monkeypatch):
    """`run_as_main(script, *args)` runs a script as `python script args...` would, but in this process: a fresh
    Python spends about 10 s importing torch and transformers. A refusal comes out as SystemExit, as on the CLI."""

    def run(script, *args):
        monkeypatch.setattr(sys, "argv", [str(script), *map(str, args)])
        runpy.run_path(str(script), run_name="__main__")

    return run


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """family -> model folder for every family in tiny_models.FAMILIES (folder.name == family)."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: tiny_models.build_tiny_encoder(family, root / family) for family in tiny_models.FAMILIES}


@pytest.fixture(params=tiny_models.FAMILIES)
def tiny_model_dir(request, tiny_model_dirs) -> Path:
    """One tiny model folder; runs the test once per family.

    Narrow it with ``@pytest.mark.parametrize("tiny_model_dir", ["bert"], indirect=True)``.
    """
    return tiny_model_dirs[request.param]


@pytest.fixture(scope="session")
def sentencepiece_model_dir(tmp_path_factory) -> Path:
    """DeBERTa-v2 folder whose only tokenizer file is spm.model (loads as a fast tokenizer)."""
    return tiny_models.build_sentencepiece_only_folder(tmp_path_factory.mktemp("spm_only") / "deberta-v2")


@pytest.fixture(scope="session")
def slow_tokenizer_dir(tmp_path_factory) -> Path:
    """BERT folder whose AutoTokenizer is the pure-Python BertTokenizerLegacy (is_fast False)."""
    return tiny_models.build_slow_tokenizer_folder(tmp_path_factory.mktemp("slow_tokenizer") / "bert-slow")


@pytest.fixture
def slow_tokenizer(slow_tokenizer_dir):
    """A loaded tokenizer with ``is_fast is False``."""
    return tiny_models.load_slow_tokenizer(slow_tokenizer_dir)
