# ruff: noqa: E501  (repository fixtures read best as one string per file)
"""`splice index` and `splice eval retrieval` from the command line: reports, clear errors, the
registry `splice serve` reopens (trusted for `splice index`, allow-listed for the API), and the
evaluation's JSON in its small form."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from splice.assistant.cli import main
from splice.assistant.errors import ApiError
from splice.assistant.repositories import RepositoryRegistry, record_repository, registered_repositories

REPO = {
    "shop/__init__.py": "",
    "shop/pricing.py": "TAX_RATE = 0.2\n\n\ndef compute_discount(total, percent):\n    return total * percent / 100\n",
    "shop/money.py": "class Money:\n    def __init__(self, cents):\n        self.cents = cents\n",
    "shop/cart.py": (
        "from .pricing import compute_discount, TAX_RATE\nfrom .money import Money\n\n\n"
        "def checkout(items, percent):\n    subtotal = sum(items)\n"
        "    discounted = compute_discount(subtotal, percent)\n    return Money(discounted * (1 + TAX_RATE))\n"
    ),
    "shop/report.py": (
        "from .money import Money\nfrom .pricing import compute_discount\n\n\n"
        "def summary(total):\n    saved = compute_discount(total, 10)\n    return Money(saved)\n"
    ),
    ".env": "SECRET_KEY=abcdefghijklmnopqrstuvwxyz0123456789\n",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "shop-repo"
    for rel, text in REPO.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("SPLICE_HOME", str(home))
    return home


def test_index_reports_and_records_the_repository(
    repo: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["index", str(repo), "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files_indexed"] == 5 and report["skipped"]["secret"] == 1
    assert report["totals"]["symbols"] >= 5
    assert Path(report["index"]).parent == home / "indexes"
    assert registered_repositories(home) == [
        {"path": str(repo.resolve()), "languages": None, "origin": "cli", "tenant": "default"}
    ]
    assert main(["index", str(repo), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "0 new or changed, 5 unchanged" in out and "secret 1" in out


def test_index_for_a_tenant_is_that_tenants_alone(repo: Path, home: Path) -> None:
    """`splice index --tenant team-a` builds team-a's own index; a server opens it for team-a only."""
    assert main(["index", str(repo), "--quiet", "--tenant", "team-a"]) == 0
    (entry,) = registered_repositories(home)
    assert entry["tenant"] == "team-a"
    registry = RepositoryRegistry(home, roots=[], token_counter=len)
    registry.load()
    try:
        (mine,) = registry.owned("team-a")
        assert mine.index.index_dir.is_relative_to(home / "indexes" / "tenants")
        assert registry.owned("team-b") == [] and registry.owned("default") == []
        assert registry.locate("team-b", str(repo / "shop" / "cart.py")) is None
        assert registry.locate("team-a", str(repo / "shop" / "cart.py")) is not None
        with pytest.raises(ApiError) as exc:
            registry.get("team-b", mine.id)
        assert exc.value.status == 404
    finally:
        registry.close()


def test_index_errors_exit_non_zero(repo: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", str(repo / "missing"), "--quiet"]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["index", str(repo), "--languages", "cobol", "--quiet"]) == 2
    assert "unknown language(s) cobol" in capsys.readouterr().err
    assert not registered_repositories(home)


def test_serve_reopens_cli_repositories_but_rechecks_api_ones(repo: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.py").write_text("def outside_function():\n    pass\n")
    record_repository(home, repo.resolve(), ["python"], origin="cli")
    record_repository(home, outside.resolve(), None, origin="api")  # registered when roots allowed it
    registry = RepositoryRegistry(home, roots=[], token_counter=len)
    registry.load()
    try:
        assert [r.root for r in registry.repos.values()] == [repo.resolve()]
        (only,) = registry.repos.values()
        assert only.languages == ["python"]
    finally:
        registry.close()


def test_eval_retrieval_small_form(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "out" / "retrieval.json"
    code = main(["eval", "retrieval", "--repo", str(repo), "--no-completions", "--json", str(out_json)])
    assert code == 0
    result = json.loads(out_json.read_text())
    assert result["tasks"] >= 3
    for key in ("recall@1", "recall@5", "recall@10", "recall@budget"):
        assert 0.0 <= result[key] <= 1.0
    assert result["recall@1"] <= result["recall@5"] <= result["recall@10"]
    assert result["recall@5"] == 1.0  # every use here is an import the graph resolves
    assert result["em_with"] is None and result["update_ms_p50"] > 0
    assert "| " in capsys.readouterr().out  # the table line


def test_eval_retrieval_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "retrieval", "--repo", str(tmp_path / "nope"), "--no-completions"]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["eval", "retrieval", "--repo", str(tmp_path / "empty"), "--no-completions"]) == 1
    assert "no cross-file tasks" in capsys.readouterr().err
