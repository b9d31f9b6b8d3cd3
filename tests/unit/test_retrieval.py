# ruff: noqa: E501  (repository fixtures are written as one-line strings)
"""Repository index and context assembly on small real repositories written to tmp_path:
import-graph resolution per language, secrets never indexed or returned, incremental updates
from disk and from editor buffers, ranking, rendering and stable context slots."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from splice.retrieval.context import (
    ContextAssembler,
    ContextOptions,
    ContextSlots,
    RenderStyle,
    Snippet,
    render_context,
    render_snippet,
)
from splice.retrieval.indexer import RepositoryIndex, default_index_dir
from splice.retrieval.tokens import split_identifier, text_terms

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAsecretsecretsecret\n-----END RSA PRIVATE KEY-----\n"


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


PY_REPO = {
    "pkg/__init__.py": """\
        from .models import Request, Response
        from .client import Client

        __all__ = ["Client", "Request", "Response"]
    """,
    "pkg/models.py": """\
        class Request:
            def __init__(self, method: str, url: str) -> None:
                self.method = method
                self.url = url

            def prepare(self) -> bytes:
                return f"{self.method} {self.url}".encode()


        class Response:
            status_code: int = 200


        def make_request(url: str) -> Request:
            return Request("GET", url)
    """,
    "pkg/utils.py": """\
        import time


        def backoff_delay(attempt: int, base: float = 0.5) -> float:
            return base * (2 ** attempt)


        def sleep_for(attempt: int) -> None:
            time.sleep(backoff_delay(attempt))
    """,
    "pkg/client.py": """\
        from . import utils
        from .models import Request, make_request


        class Client:
            def send(self, request: Request) -> None:
                for attempt in range(3):
                    utils.sleep_for(attempt)
    """,
    "app.py": """\
        from pkg import Request

        def main() -> None:
            req = Request("GET", "/")
    """,
    ".env": "SECRET_TOKEN=abcdefghijklmnopqrstuvwxyz123456\n",
    "deploy/server.key": PEM,
    "settings_local.py": 'STRIPE = "sk_live_' + "a1B2c3D4e5F6g7H8i9J0k1L2" + '"\n',
    "embedded_key.py": f'KEY = """{PEM}"""\n',
    "node_modules/lib/index.js": "export function vendored() {}\n",
    "build/gen.py": "def built(): pass\n",
    ".gitignore": "build/\n",
}


@pytest.fixture
def py_repo(tmp_path: Path) -> RepositoryIndex:
    root = tmp_path / "repo"
    write(root, PY_REPO)
    index = RepositoryIndex(root, tmp_path / "index")
    index.build()
    yield index
    index.close()


def _defs(snippets: list[Snippet]) -> list[str]:
    """path:name of every definition shown, best first (a snippet shows one file's definitions)."""
    return [f"{s.path}:{n}" for s in snippets if s.source == "definition" for n in s.names or (s.name,)]


# --- tokens ---


def test_identifier_sub_tokens() -> None:
    assert split_identifier("parseHTTPResponse_v2") == ["parse", "http", "response", "v2"]
    assert split_identifier("max_retries") == ["max", "retries"]
    assert split_identifier("XMLHttpRequest") == ["xml", "http", "request"]
    terms = text_terms("def getHttpClient(self): return self")
    assert "gethttpclient" in terms and "http" in terms and "client" in terms
    assert "def" not in terms and "self" not in terms


# --- what gets indexed ---


def test_secrets_vendored_and_ignored_files_are_never_indexed(py_repo: RepositoryIndex) -> None:
    paths = set(py_repo.store.paths())
    assert paths == {"pkg/__init__.py", "pkg/models.py", "pkg/utils.py", "pkg/client.py", "app.py"}
    for query in (
        "SECRET_TOKEN",
        "PRIVATE KEY MIIEowIBAAKCAQEAsecretsecretsecret",
        "sk_live",
        "vendored",
        "built",
    ):
        assert py_repo.store.search(text_terms(query), limit=10) == [], query


def test_secret_buffers_from_the_editor_are_refused(py_repo: RepositoryIndex) -> None:
    assert not py_repo.update_buffer(".env", "API_KEY=1234567890abcdef1234\n")
    assert not py_repo.update_buffer("pkg/keys.py", f'K = """{PEM}"""\n')
    assert not py_repo.update_buffer("../outside.py", "def x(): pass\n")
    assert "pkg/keys.py" not in py_repo.store.paths()


def test_index_report_and_incremental_rebuild(py_repo: RepositoryIndex, tmp_path: Path) -> None:
    report = py_repo.last_report
    assert report is not None and report.files_indexed == 5 and report.chunks > 5
    assert report.skipped["secret"] >= 2 and report.skipped["vendored"] >= 1
    again = py_repo.build()
    assert (again.files_indexed, again.files_unchanged, again.files_removed) == (0, 5, 0)
    utils = py_repo.root / "pkg/utils.py"
    utils.write_text(utils.read_text() + "\n\ndef jitter_delay(attempt: int) -> float:\n    return 0.1\n")
    os.utime(utils, ns=(utils.stat().st_atime_ns, utils.stat().st_mtime_ns + 10_000_000))
    (py_repo.root / "app.py").unlink()
    third = py_repo.build()
    assert (third.files_indexed, third.files_unchanged, third.files_removed) == (1, 3, 1)
    assert [c.name for c in py_repo.store.definitions("jitter_delay")] == ["jitter_delay"]


def test_index_survives_reopening(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write(root, PY_REPO)
    first = RepositoryIndex(root, tmp_path / "index")
    first.build()
    counts = first.store.counts()
    first.close()
    second = RepositoryIndex(root, tmp_path / "index")
    assert second.store.counts() == counts
    assert second.build().files_indexed == 0
    second.close()


def test_default_index_dir_is_per_checkout(tmp_path: Path) -> None:
    a = default_index_dir(tmp_path / "x" / "repo", tmp_path / "home")
    b = default_index_dir(tmp_path / "y" / "repo", tmp_path / "home")
    assert a != b and a.name.startswith("repo-") and a.parent == tmp_path / "home" / "indexes"


# --- the optional vector index ---


def test_vector_index_with_an_embedder(tmp_path: Path) -> None:
    from splice.retrieval.embedding import HashingEmbedder

    root = tmp_path / "repo"
    write(root, PY_REPO)
    index = RepositoryIndex(root, tmp_path / "index", embedder=HashingEmbedder(64))
    index.build()
    counts = index.store.counts()
    assert counts["vectors"] == counts["chunks"] > 5
    target = index.store.definitions("backoff_delay")[0]
    query = index.embedder.embed([target.text])[0]  # type: ignore[union-attr]
    assert index.store.vector_search(query, limit=3)[0][0].id == target.id
    hits = ContextAssembler(index)._similar_hits("app.py", "delay = base * (2 ** attempt)\n")
    assert target.id in [c.id for c, _ in hits]
    index.close()
    # reopened without one, the index embeds queries with its own embedder
    again = RepositoryIndex(root, tmp_path / "index")
    assert again.embedder is not None and again.embedder.name == "hashing:64"
    again.close()
    # another embedder: every file is read and embedded again
    wider = RepositoryIndex(root, tmp_path / "index", embedder=HashingEmbedder(128))
    assert wider.build().files_indexed == 5
    assert wider.store.counts()["vectors"] == counts["chunks"]
    assert len(wider.embedder.embed(["x"])[0]) == 128  # type: ignore[union-attr]
    wider.close()


def test_load_embedder_errors() -> None:
    from splice.retrieval.embedding import load_embedder

    assert load_embedder("hashing").dim == 256
    with pytest.raises(ValueError, match="unknown embedder"):
        load_embedder("/nonexistent/model")
    with pytest.raises(ValueError, match="bad embedder"):
        load_embedder("hashing:2")


# --- definitions through the import graph ---


def test_imported_class_is_the_first_definition(py_repo: RepositoryIndex) -> None:
    prefix = (py_repo.root / "pkg/client.py").read_text() + "\n    def build(self, url):\n        req = "
    snippets = ContextAssembler(py_repo).candidates("pkg/client.py", prefix)
    defs = _defs(snippets)
    assert defs[0] in ("pkg/models.py:Request", "pkg/models.py:make_request")
    assert {"pkg/models.py:Request", "pkg/models.py:make_request"} <= set(defs[:3])
    assert all(s.path != "pkg/client.py" for s in snippets)  # never the current file


def test_definitions_of_one_file_share_a_snippet(py_repo: RepositoryIndex) -> None:
    prefix = (py_repo.root / "pkg/client.py").read_text() + "\n    def build(self, url):\n        req = "
    snippets = ContextAssembler(py_repo).candidates("pkg/client.py", prefix)
    models = [s for s in snippets if s.source == "definition" and s.path == "pkg/models.py"]
    assert len(models) == 1
    (group,) = models
    assert set(group.names) == {"Request", "make_request"} and len(group.chunk_ids) == 2
    chunks = {c.id: c for c in py_repo.store.chunks_in_file("pkg/models.py")}
    assert {chunks[i].name for i in group.chunk_ids} == {"Request", "make_request"}
    assert "class Request:" in group.text and "def make_request(url: str) -> Request:" in group.text


def test_long_definitions_are_summarised_as_signatures() -> None:
    from splice.retrieval.context import compact_definition
    from splice.retrieval.store import StoredChunk

    body = "\n".join(f"    x{i} = {i}" for i in range(20))
    py = StoredChunk(
        1,
        "a.py",
        "python",
        "function",
        "f",
        "f",
        0,
        22,
        "def f(a, b)",
        f"@cache\ndef f(\n    a,\n    b,\n) -> int:  # doc\n{body}\n    return a",
    )
    assert compact_definition(py) == "@cache\ndef f(\n    a,\n    b,\n) -> int: ..."
    go = StoredChunk(
        2, "a.go", "go", "function", "G", "G", 0, 21, "func G() int", "func G() int {\n" + body + "\n}"
    )
    assert compact_definition(go) == "func G() int { ... }"
    short = StoredChunk(3, "a.py", "python", "function", "h", "h", 0, 1, "def h()", "def h():\n    return 1")
    assert compact_definition(short) == short.text


def test_module_attribute_resolves_in_the_module(py_repo: RepositoryIndex) -> None:
    prefix = "from . import utils\n\n\ndef retry(attempt):\n    delay = utils.backoff_delay(attempt)\n    "
    defs = _defs(ContextAssembler(py_repo).candidates("pkg/other.py", prefix))
    assert defs[0] == "pkg/utils.py:backoff_delay"


def test_reexport_through_package_init(py_repo: RepositoryIndex) -> None:
    prefix = "from pkg import Request\n\n\ndef main():\n    r = Request('GET', '/')\n    r."
    snippets = ContextAssembler(py_repo).candidates("tools/cli.py", prefix)
    first = snippets[0]
    assert (first.path, first.name, first.source) == ("pkg/models.py", "Request", "definition")
    # the class chunk is a skeleton: method bodies elided, signatures kept
    assert "def prepare(self) -> bytes" in first.text and "encode()" not in first.text


def test_unsaved_buffer_is_indexed_and_used(py_repo: RepositoryIndex) -> None:
    text = (
        py_repo.root / "pkg/utils.py"
    ).read_text() + "\n\ndef circuit_breaker(limit: int) -> bool:\n    return True\n"
    assert py_repo.update_buffer("pkg/utils.py", text, (10, 12))
    prefix = "from .utils import circuit_breaker\n\n\ndef go():\n    "
    defs = _defs(ContextAssembler(py_repo).candidates("pkg/new.py", prefix))
    assert defs[0] == "pkg/utils.py:circuit_breaker"
    # a full rebuild keeps the open buffer rather than the file on disk
    py_repo.build()
    assert py_repo.store.definitions("circuit_breaker")
    py_repo.close_buffer("pkg/utils.py")
    assert not py_repo.store.definitions("circuit_breaker")


def test_recent_edits_of_other_files_come_back(py_repo: RepositoryIndex) -> None:
    text = (
        (py_repo.root / "pkg/utils.py").read_text().replace("base * (2 ** attempt)", "base * (3 ** attempt)")
    )
    py_repo.update_buffer("pkg/utils.py", text, (4, 4))
    snippets = ContextAssembler(py_repo).candidates("app.py", "x = 1\n")
    recent = [s for s in snippets if s.source == "recent_edit"]
    assert [s.name for s in recent] == ["backoff_delay"] and "3 ** attempt" in recent[0].text


def test_budget_is_respected(py_repo: RepositoryIndex) -> None:
    prefix = (py_repo.root / "pkg/client.py").read_text() + "\n        req = "
    asm = ContextAssembler(py_repo)
    everything = asm.candidates("pkg/client.py", prefix)
    style = RenderStyle.for_language("python")
    cost = [len(render_snippet(s, style)) for s in everything]
    chosen = asm.assemble(
        "pkg/client.py",
        prefix,
        budget_tokens=cost[0] + 1,
        count_tokens=len,
        render=lambda s: render_snippet(s, style),
    )
    assert chosen[0] == everything[0]
    assert sum(len(render_snippet(s, style)) for s in chosen) <= cost[0] + 1


# --- other languages' import graphs ---


def test_javascript_relative_import(tmp_path: Path) -> None:
    root = tmp_path / "js"
    write(
        root,
        {
            "src/math/vector.ts": "export function addVectors(a: number[], b: number[]): number[] {\n  return a;\n}\n",
            "src/other.ts": "export function addVectors(x: string) { return x; }\n",
            "src/main.ts": "import { addVectors } from './math/vector';\n\nconst v = [1];\n",
        },
    )
    index = RepositoryIndex(root, tmp_path / "idx")
    index.build()
    prefix = "import { addVectors } from './math/vector';\n\nconst v = [1];\nconst w = "
    defs = _defs(ContextAssembler(index).candidates("src/main.ts", prefix))
    assert defs[0] == "src/math/vector.ts:addVectors"
    index.close()


def test_go_package_qualified_call(tmp_path: Path) -> None:
    root = tmp_path / "go"
    write(
        root,
        {
            "go.mod": "module example.com/app\n",
            "internal/store/store.go": "package store\n\nfunc OpenStore(path string) error {\n\treturn nil\n}\n",
            "cmd/main.go": 'package main\n\nimport "example.com/app/internal/store"\n\nfunc main() {\n}\n',
        },
    )
    index = RepositoryIndex(root, tmp_path / "idx")
    index.build()
    prefix = 'package main\n\nimport "example.com/app/internal/store"\n\nfunc main() {\n\terr := store.OpenStore("x")\n\t'
    defs = _defs(ContextAssembler(index).candidates("cmd/main.go", prefix))
    assert defs[0] == "internal/store/store.go:OpenStore"
    index.close()


def test_c_include_and_rust_use(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    write(
        root,
        {
            "include/ring.h": "#ifndef RING_H\n#define RING_H\nint ring_push(int value);\n#endif\n",
            "src/ring.c": '#include "../include/ring.h"\n\nint ring_push(int value) {\n    return value;\n}\n',
            "src/main.c": '#include "../include/ring.h"\n\nint main(void) {\n    return 0;\n}\n',
            "rs/src/geometry/shapes.rs": "pub struct Circle {\n    pub r: f64,\n}\n",
            "rs/src/main.rs": "use crate::geometry::shapes::Circle;\n\nfn main() {\n}\n",
        },
    )
    index = RepositoryIndex(root, tmp_path / "idx")
    index.build()
    asm = ContextAssembler(index)
    c_defs = _defs(
        asm.candidates(
            "src/main.c", '#include "../include/ring.h"\n\nint main(void) {\n    ring_push(1);\n    '
        )
    )
    assert c_defs[0] in ("include/ring.h:ring_push", "src/ring.c:ring_push")
    rs_defs = _defs(
        asm.candidates("rs/src/main.rs", "use crate::geometry::shapes::Circle;\n\nfn main() {\n    let c = ")
    )
    assert rs_defs[0] == "rs/src/geometry/shapes.rs:Circle"
    index.close()


# --- rendering and slots ---


def _snip(key: str, score: float = 1.0, text: str = "x = 1") -> Snippet:
    return Snippet(key, f"{key}.py", 0, 0, text, "definition", key, score)


def test_render_path_comment_then_code_and_repo_level() -> None:
    s = Snippet("a#f", "pkg/a.py", 3, 4, "def f():\n    return 1", "definition", "f", 1.0)
    # code in the prompt's language follows its path comment as it is
    assert (
        render_snippet(s, RenderStyle.for_language("python")) == "# Path: pkg/a.py\ndef f():\n    return 1\n"
    )
    # commented out when asked, or when the snippet is in another language
    commented = "# Path: pkg/a.py\n# def f():\n#     return 1\n"
    assert render_snippet(s, RenderStyle.for_language("python", commented=True)) == commented
    assert render_snippet(s, RenderStyle.for_language("typescript")).startswith(
        "// Path: pkg/a.py\n// def f()"
    )
    ts = Snippet("b#g", "web/b.ts", 0, 0, "export function g() {}", "definition", "g", 1.0)
    assert (
        render_snippet(ts, RenderStyle.for_language("typescriptreact"))
        == "// Path: web/b.ts\nexport function g() {}\n"
    )
    text = render_context([s], RenderStyle("#", "<file_sep>"), "main.py")
    assert text == "<file_sep>pkg/a.py\ndef f():\n    return 1\n<file_sep>main.py\n"
    assert render_context([], RenderStyle()) == ""


def test_slots_keep_positions_and_refill_in_place() -> None:
    slots = ContextSlots(max_snippets=10)
    # the best snippet goes last, nearest the document
    first = slots.arrange("doc", [_snip("a"), _snip("b"), _snip("c")], 100, lambda s: 10)
    assert [s.key for s in first] == ["c", "b", "a"]
    # c and b stay where they were; a's slot is refilled by d rather than everything moving
    second = slots.arrange("doc", [_snip("d"), _snip("c"), _snip("b")], 100, lambda s: 10)
    assert [s.key for s in second] == ["c", "b", "d"]
    # over budget, the lowest-ranked leave (c) and the new one (e) takes the free slot
    third = slots.arrange("doc", [_snip("e"), _snip("d"), _snip("b"), _snip("c")], 30, lambda s: 10)
    assert [s.key for s in third] == ["e", "b", "d"]
    # new snippets beyond the refilled slots are appended, the best of them last
    fourth = slots.arrange(
        "doc", [_snip("f"), _snip("g"), _snip("e"), _snip("b"), _snip("d")], 100, lambda s: 10
    )
    assert [s.key for s in fourth] == ["e", "b", "d", "g", "f"]
    assert [s.key for s in slots.arrange("other", [_snip("z")], 100, lambda s: 10)] == ["z"]


def test_slots_keep_at_most_max_snippets() -> None:
    slots = ContextSlots(max_snippets=2)
    chosen = slots.arrange("doc", [_snip("a"), _snip("b"), _snip("c")], 100, lambda s: 10)
    assert [s.key for s in chosen] == ["b", "a"]


# --- a package's public API (whole-repository checkouts: tests use `pkg.name`) ---

API_REPO = {
    "pkg/__init__.py": "from .utils import echo, command, rarely_used\nfrom .core import *\n",
    "pkg/utils.py": "def echo(message):\n    print(message)\n\n\ndef command(f):\n    return f\n\n\ndef rarely_used():\n    return 0\n",
    "pkg/core.py": "__all__ = ['Thing']\n\n\nclass Thing:\n    def run(self):\n        return 1\n",
    "pkg/helpers.py": "def sibling_helper():\n    return 2\n",
    **{
        f"examples/app{i}.py": f"import pkg\n\n\n@pkg.command\ndef main{i}():\n    pkg.echo('hi')\n    return pkg.Thing().run()\n"
        for i in range(4)
    },
}


@pytest.fixture
def api_index(tmp_path: Path) -> Iterator[RepositoryIndex]:
    root = tmp_path / "repo"
    write(root, API_REPO)
    index = RepositoryIndex(root, tmp_path / "index")
    index.build()
    yield index
    index.close()


def test_a_package_imported_whole_brings_its_most_used_api(api_index: RepositoryIndex) -> None:
    index = api_index
    prefix = "import pkg\n\n\ndef test_main():\n    pkg.command(print)\n    "
    # without the names that similar code uses (examples/ use the API too): this source alone
    alone = {"cooccurrence_weight": 0.0, "cooccurrence_names": 0}
    on = ContextAssembler(index, ContextOptions(**alone))
    with_api = _defs(on.candidates("tests/test_app.py", prefix, "", "python")[:5])
    assert "pkg/utils.py:echo" in with_api and "pkg/core.py:Thing" in with_api  # via `from .core import *`
    assert "pkg/utils.py:rarely_used" not in with_api  # exported, used nowhere else
    off = ContextAssembler(index, ContextOptions(module_api_names=0, **alone))
    without = _defs(off.candidates("tests/test_app.py", prefix, "", "python")[:5])
    assert "pkg/utils.py:echo" not in without and "pkg/core.py:Thing" not in without
    # a sibling module bound whole is not a package API; an unused package binding brings nothing
    sibling = "from pkg import helpers\n\n\ndef f():\n    helpers.sibling_helper()\n    "
    assert "pkg/utils.py:echo" not in _defs(on.candidates("pkg/x.py", sibling, "", "python"))
    unused = "import pkg\n\n\ndef test_main():\n    "
    assert "pkg/utils.py:echo" not in _defs(on.candidates("tests/t.py", unused, "", "python"))


def test_the_api_popularity_is_counted_once_per_index_not_per_request(api_index: RepositoryIndex) -> None:
    from splice.retrieval import context

    index = api_index
    prefix = "import pkg\n\n\ndef test_main():\n    pkg.command(print)\n    "
    ContextAssembler(index).candidates("tests/test_app.py", prefix, "", "python")
    first = context._POPULARITY[index]
    ContextAssembler(index).candidates("tests/test_app.py", prefix, "", "python")  # a new request
    assert context._POPULARITY[index] is first and first[2]["echo"] >= 4
