"""Repository-context training samples: laid out exactly as the service's prompt with context,
drawn from a corpus's own repositories (excluded ones left out), mixed into the training stream
at their rate, and a second training stage that starts from an exported adapter."""

from __future__ import annotations

import functools
import inspect
import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast

from splice.bench.retrieval import mcnemar_p
from splice.completion.fim import build_prompt, detect_template, repository_separator
from splice.completion.models import LoadedModel, ModelSpec
from splice.training.config import FinetuneConfig
from splice.training.data import FimStream
from splice.training.export import export_adapter
from splice.training.fim import IGNORE, FimSample, encode_sample, end_token_id
from splice.training.repo_context import (
    RepoSample,
    build_repo_samples,
    cached_repo_samples,
    group_repositories,
)
from splice.training.trainer import (
    TrainingError,
    adapter_state,
    load_initial_adapter,
    prepare_model,
    train,
)
from splice_testkit.tiny import build_model, build_tokenizer

SHOP = {
    "shop/__init__.py": "",
    "shop/pricing.py": (
        "TAX_RATE = 0.2\n\n\ndef compute_discount(total, percent):\n    return total * percent / 100\n"
    ),
    "shop/money.py": "class Money:\n    def __init__(self, cents):\n        self.cents = cents\n",
    "shop/cart.py": (
        "from .pricing import compute_discount, TAX_RATE\nfrom .money import Money\n\n\n"
        "def checkout(items, percent):\n    subtotal = sum(items)\n"
        "    discounted = compute_discount(subtotal, percent)\n"
        "    return Money(discounted * (1 + TAX_RATE))\n"
    ),
}
OTHER = {
    "lib/a.py": "def helper_function(x):\n    return x\n",
    "lib/b.py": "from .a import helper_function\n\n\ndef use(y):\n    value = helper_function(y)\n",
    "lib/c.py": "",
}


@functools.cache
def _tokenizer(family: str) -> PreTrainedTokenizerFast:
    return build_tokenizer(family)


@pytest.mark.parametrize(("family", "mode"), [("starcoder", "psm"), ("starcoder", "spm"), ("qwen", "psm")])
@pytest.mark.parametrize("loss_on", ["middle", "all"])
def test_context_sample_is_the_served_prompt_and_takes_no_loss(family: str, mode: str, loss_on: str) -> None:
    tokenizer = _tokenizer(family)
    template = detect_template(tokenizer)
    assert mode in template.modes  # qwen is trained with PSM only
    sep = repository_separator(tokenizer, template)
    assert sep is not None  # both families have a file separator token
    context = f"{sep}shop/pricing.py\ndef compute_discount(total, percent): ...\n{sep}shop/cart.py\n"
    sample = FimSample("def checkout(items):\n    ", "discounted = compute_discount(1, 2)\n", "", mode)
    encoded = encode_sample(tokenizer, template, sample, loss_on=loss_on, context=context)  # type: ignore[arg-type]
    prompt = build_prompt(tokenizer, template, sample.prefix, sample.suffix, mode=mode, context=context)
    assert encoded.input_ids[: encoded.middle_start] == prompt.input_ids
    assert encoded.input_ids[-1] == end_token_id(tokenizer, template)
    context_end = prompt.context_tokens  # the context comes first (these templates add no BOS)
    assert context_end > 0
    assert all(label == IGNORE for label in encoded.labels[:context_end])
    assert tokenizer.convert_tokens_to_ids(sep) in encoded.input_ids[:context_end]  # one token each
    if loss_on == "all":
        assert encoded.labels[context_end:] == encoded.input_ids[context_end:]


def test_repository_samples_come_from_the_corpus_repositories() -> None:
    tokenizer = _tokenizer("starcoder")
    template = detect_template(tokenizer)
    records = [{"id": f"shop-dist/{p}", "text": t} for p, t in SHOP.items()]
    records += [{"id": f"other-dist/{p}", "text": t} for p, t in OTHER.items()]
    repos = group_repositories(records)
    assert (
        set(repos) == {"shop-dist", "other-dist"}
        and repos["shop-dist"]["shop/cart.py"] == SHOP["shop/cart.py"]
    )

    samples = build_repo_samples(repos, tokenizer, template, context_tokens=256, suffix_rate=1.0)
    assert {s.repository for s in samples} == {"shop-dist", "other-dist"}
    for s in samples:
        text = (SHOP | OTHER)[s.path]
        assert text.startswith(s.prefix + s.middle + s.suffix)  # the file itself, cut at the task's line
        assert s.middle.endswith("\n") and s.middle.strip()
        assert s.context.startswith("<file_sep>") and s.context.endswith(f"<file_sep>{s.path}\n")
    cart = next(s for s in samples if s.middle == "discounted = compute_discount(subtotal, percent)\n")
    assert "def compute_discount(total, percent)" in cart.context and "shop/pricing.py" in cart.context
    assert cart.suffix.startswith("    return Money(")

    kept = build_repo_samples(repos, tokenizer, template, exclude=["OTHER-dist"], suffix_rate=0.0)
    assert {s.repository for s in kept} == {"shop-dist"} and all(s.suffix == "" for s in kept)
    assert build_repo_samples(repos, tokenizer, template, min_files=10) == []


def _stream(repo_samples: list[RepoSample], rate: float, seq_len: int = 256) -> FimStream:
    tokenizer = _tokenizer("starcoder")
    return FimStream(
        [inspect.getsource(textwrap), inspect.getsource(json.decoder)],
        tokenizer,
        detect_template(tokenizer),
        seq_len=seq_len,
        fim_rate=0.9,
        spm_rate=0.5,
        span="mixed",
        loss_on="middle",
        seed=1,
        repo_samples=repo_samples,
        repo_rate=rate,
    )


def test_stream_mixes_repository_samples_at_their_rate() -> None:
    long_prefix = "".join(f"value_{i} = compute({i})\n" for i in range(400))
    repo = [
        RepoSample(
            "r", "a.py", "<file_sep>b.py\ndef compute(x): ...\n<file_sep>a.py\n", "x = ", "compute(1)\n", ""
        ),
        RepoSample(
            "r",
            "c.py",
            "<file_sep>b.py\ndef compute(x): ...\n<file_sep>c.py\n",
            long_prefix,
            "last = 1\n",
            "",
        ),
    ]
    stream = _stream(repo, 0.5)
    samples = [s for _, s in zip(range(400), stream.samples(), strict=False)]
    assert 0.4 < stream.stats.repo_samples / stream.stats.samples < 0.6
    assert all(len(s) <= 256 for s in samples)
    tokenizer = _tokenizer("starcoder")
    middles = {tokenizer.decode(s.input_ids[s.middle_start : -1]) for s in samples}
    assert {"compute(1)\n", "last = 1\n"} <= middles  # the long prefix was cut to fit, the middle kept
    # deterministic, and without repository samples the stream is the plain FIM stream
    assert [r.input_ids for _, r in zip(range(20), _stream(repo, 0.5).rows(), strict=False)] == [
        r.input_ids for _, r in zip(range(20), _stream(repo, 0.5).rows(), strict=False)
    ]
    assert [r.input_ids for _, r in zip(range(20), _stream(repo, 0.0).rows(), strict=False)] == [
        r.input_ids for _, r in zip(range(20), _stream([], 0.0).rows(), strict=False)
    ]
    with pytest.raises(ValueError, match="repo_rate"):
        _stream(repo, 1.0)


TEXTS = [inspect.getsource(textwrap), inspect.getsource(json.encoder), inspect.getsource(json.decoder)]


def _loaded() -> LoadedModel:
    tokenizer = build_tokenizer("plain")
    return LoadedModel(
        build_model(tokenizer),
        tokenizer,
        "tiny",
        ModelSpec("dir", "/tiny"),
        torch.device("cpu"),
        torch.float32,
        512,
    )


def _config(out: Path, **overrides: object) -> FinetuneConfig:
    settings: dict[str, object] = dict(
        data="unused", out=str(out), seq_len=96, batch_size=2, max_steps=2, warmup_steps=1, eval_every=2,
        eval_rows=2, save_every=100, lr=3e-3, lora_r=4, lora_alpha=8, seed=3,
    )  # fmt: skip
    settings.update(overrides)
    return FinetuneConfig(**settings)  # type: ignore[arg-type]


def test_second_stage_starts_from_an_exported_adapter(tmp_path: Path) -> None:
    first = prepare_model(_config(tmp_path / "one"), _loaded())
    state = train(first, TEXTS[:2], TEXTS[2:], show_progress=False)
    exported = export_adapter(first, state, tmp_path / "adapter", name="stage-one")

    second = prepare_model(_config(tmp_path / "two"), _loaded())
    fresh = adapter_state(second)
    load_initial_adapter(second, exported)
    loaded, saved = adapter_state(second), load_file(str(exported / "adapter_model.safetensors"))
    assert loaded.keys() == saved.keys()
    for key in saved:
        torch.testing.assert_close(loaded[key], saved[key].to(loaded[key].dtype))
    assert any(not torch.equal(fresh[k], loaded[k]) for k in saved)  # the weights did change

    # train() starts a new run from it (one step at lr 0 leaves the weights as loaded)
    third = prepare_model(_config(tmp_path / "three", init_adapter=str(exported), lr=0.0), _loaded())
    state3 = train(third, TEXTS[:2], TEXTS[2:], show_progress=False, stop_after=1)
    for key in saved:
        torch.testing.assert_close(adapter_state(third)[key], saved[key].to(loaded[key].dtype))
    # its card tells both stages
    stage_two = export_adapter(third, state3, tmp_path / "adapter2", name="stage-two")
    meta = json.loads((stage_two / "splice-adapter.json").read_text())
    assert [s["name"] for s in meta["stages"]] == ["stage-one"] and meta["stages"][0]["training"][
        "steps"
    ] == 2
    assert "1. `stage-one`: 2 steps" in (stage_two / "README.md").read_text()

    with pytest.raises(TrainingError, match="does not fit this LoRA configuration"):
        load_initial_adapter(prepare_model(_config(tmp_path / "r8", lora_r=8), _loaded()), exported)
    other = _loaded()
    other.model_id = "someone-else"
    with pytest.raises(TrainingError, match="trained on 'tiny'"):
        load_initial_adapter(prepare_model(_config(tmp_path / "x"), other), exported)
    with pytest.raises(TrainingError, match="not an adapter folder"):
        load_initial_adapter(second, tmp_path)
    with pytest.raises(TrainingError, match="no repository samples"):
        train(
            prepare_model(_config(tmp_path / "rc", repo_context=0.5), _loaded()),
            TEXTS[:2],
            [],
            show_progress=False,
        )


def test_mcnemar_exact_p_values() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(5, 5) == 1.0
    assert mcnemar_p(10, 0) == pytest.approx(2 / 2**10)
    assert mcnemar_p(72, 42) == pytest.approx(mcnemar_p(42, 72))
    assert 0.005 < mcnemar_p(72, 42) < 0.008  # the HumanEval comparison in the README (p = 0.006)
    assert mcnemar_p(6, 1) == pytest.approx(0.125)


def test_repository_samples_are_cached_per_corpus_and_settings(tmp_path: Path) -> None:
    built: list[int] = []
    samples = [RepoSample("r", "a.py", "<file_sep>b.py\nx\n<file_sep>a.py\n", "y = ", "f(1)\n", "z\n")]

    def build() -> list[RepoSample]:
        built.append(1)
        return samples

    cache = tmp_path / "run" / "repo_samples.jsonl.gz"
    assert cached_repo_samples(cache, {"seed": 0}, build) == samples and len(built) == 1
    assert cached_repo_samples(cache, {"seed": 0}, build) == samples and len(built) == 1  # read back
    assert cached_repo_samples(cache, {"seed": 1}, build) == samples and len(built) == 2  # settings changed
    cache.write_bytes(b"not gzip")
    assert cached_repo_samples(cache, {"seed": 1}, build) == samples and len(built) == 3  # unreadable
    assert not list(cache.parent.glob("*.tmp"))
