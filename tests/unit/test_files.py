"""The repository walker: what gets indexed, what is skipped and why, and safe reads by relative path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from splice.retrieval.files import (
    SKIP_REASONS,
    IgnoreRules,
    Skipped,
    SourceFile,
    WalkConfig,
    check_content,
    check_path,
    read_source,
    walk,
)

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7V1s3cr3tK3y\n-----END RSA PRIVATE KEY-----\n"
STRIPE = "sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc"


def write(root: Path, rel: str, text: str | bytes = "x = 1\n") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def run(root: Path, config: WalkConfig | None = None) -> tuple[list[str], dict[str, str]]:
    """Yielded paths, and reason by skipped path."""
    skipped: list[Skipped] = []
    files = list(walk(root, config or WalkConfig(), skipped.append))
    reasons = {s.path: s.reason for s in skipped}
    assert len(reasons) == len(skipped), "a path was reported twice"
    assert set(reasons.values()) <= set(SKIP_REASONS)
    assert not {f.path for f in files} & set(reasons), "a path was both yielded and skipped"
    return [f.path for f in files], reasons


# --- gitignore -------------------------------------------------------------------------------------


def test_root_gitignore_files_dirs_and_negation(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "*.gen.py\n!keep.gen.py\nlogs/\n/only_top.py\n# a comment\n")
    write(tmp_path, "a.gen.py")
    write(tmp_path, "keep.gen.py")
    write(tmp_path, "sub/b.gen.py")
    write(tmp_path, "logs/x.py")
    write(tmp_path, "sub/logs/y.py")
    write(tmp_path, "logs.py")  # "logs/" matches directories only
    write(tmp_path, "only_top.py")
    write(tmp_path, "sub/only_top.py")  # anchored pattern: only at the root
    paths, reasons = run(tmp_path)
    assert paths == ["keep.gen.py", "logs.py", "sub/only_top.py"]
    assert reasons["a.gen.py"] == reasons["sub/b.gen.py"] == reasons["only_top.py"] == "ignored"
    assert reasons["logs"] == reasons["sub/logs"] == "ignored"
    assert "logs/x.py" not in reasons, "an ignored directory must be pruned, not listed"


def test_nested_gitignore_is_relative_to_its_directory_and_overrides_the_root(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "*.tmp.py\n")
    write(tmp_path, "pkg/.gitignore", "/local.py\n!wanted.tmp.py\n")
    write(tmp_path, "local.py")  # pkg's anchored pattern does not reach the root
    write(tmp_path, "pkg/local.py")
    write(tmp_path, "pkg/deeper/local.py")  # anchored to pkg/, so not here
    write(tmp_path, "pkg/wanted.tmp.py")  # re-included by the deeper file
    write(tmp_path, "pkg/other.tmp.py")
    write(tmp_path, "wanted.tmp.py")  # the negation applies only under pkg/
    paths, reasons = run(tmp_path)
    assert paths == ["local.py", "pkg/deeper/local.py", "pkg/wanted.tmp.py"]
    assert reasons["pkg/local.py"] == reasons["pkg/other.tmp.py"] == reasons["wanted.tmp.py"] == "ignored"

    rules = IgnoreRules(tmp_path)
    assert rules.is_ignored("pkg/local.py", False)
    assert not rules.is_ignored("pkg/wanted.tmp.py", False)
    assert rules.is_ignored("wanted.tmp.py", False)
    assert not rules.is_ignored("pkg/deeper/local.py", False)


def test_git_info_exclude_and_git_dir(tmp_path: Path) -> None:
    write(tmp_path, ".git/info/exclude", "scratch/\nnotes_*.py\n")
    write(tmp_path, ".git/config", "[core]\n")
    write(tmp_path, ".git/hooks/pre-commit.py")
    write(tmp_path, "scratch/a.py")
    write(tmp_path, "notes_1.py")
    write(tmp_path, "main.py")
    paths, reasons = run(tmp_path, WalkConfig(include_hidden=True))
    assert paths == ["main.py"]
    assert reasons == {".git": "ignored", "notes_1.py": "ignored", "scratch": "ignored"}
    rules = IgnoreRules(tmp_path)
    assert rules.is_ignored(".git", True)
    assert rules.is_ignored(".git/hooks/pre-commit.py", False)
    assert rules.is_ignored("scratch", True)


def test_a_gitignore_negation_cannot_reinclude_a_file_in_an_ignored_directory(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "gen/\n!gen/keep.py\n")
    write(tmp_path, "gen/keep.py")
    rules = IgnoreRules(tmp_path)
    assert rules.is_ignored("gen/keep.py", False)
    assert run(tmp_path)[0] == []
    with pytest.raises(ValueError):
        rules.is_ignored("../x.py", False)


def test_gitignore_is_read_lazily_only_for_visited_directories(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "skipme/\n")
    write(tmp_path, "skipme/.gitignore", "!*.py\n[unbalanced\n")
    write(tmp_path, "skipme/x.py")
    rules = IgnoreRules(tmp_path)
    assert rules.is_ignored("skipme/x.py", False)
    assert "skipme" not in rules._specs  # never looked at: its directory is ignored


# --- pruned directories, hidden, symlinks ----------------------------------------------------------


def test_vendored_directories_are_pruned(tmp_path: Path) -> None:
    for rel in (
        "node_modules/left-pad/index.js",
        "vendor/lib.go",
        "__pycache__/m.py",
        "build/gen.py",
        "pkg.egg-info/x.py",
        "src/third_party/dep.c",
        ".venv/lib/site.py",
        "env/lib/site.py",
        "myenv/lib/site.py",
        "crate/target/debug/build.rs",
        "crate2/target/x.rs",
    ):
        write(tmp_path, rel)
    write(tmp_path, "env/pyvenv.cfg", "home = /usr\n")
    write(tmp_path, "myenv/pyvenv.cfg", "home = /usr\n")
    write(tmp_path, "crate/Cargo.toml", "[package]\n")
    write(tmp_path, "crate2/target/CACHEDIR.TAG", "Signature: 8a477f597d28d172789f06886806bc55\n")
    write(tmp_path, "env2/settings.py")  # "env" without pyvenv.cfg is ordinary code
    write(tmp_path, "target/main.rs")  # and so is "target" outside a Rust crate
    write(tmp_path, "src/app.py")
    paths, reasons = run(tmp_path, WalkConfig(include_hidden=True))
    assert paths == ["env2/settings.py", "src/app.py", "target/main.rs"]
    for rel in (
        "node_modules",
        "vendor",
        "__pycache__",
        "build",
        "pkg.egg-info",
        "src/third_party",
        ".venv",
        "env",
        "myenv",
        "crate/target",
        "crate2/target",
    ):
        assert reasons[rel] == "vendored", rel
    assert not any(r.startswith("node_modules/") for r in reasons), "pruned without descending"


def test_the_root_itself_is_never_pruned(tmp_path: Path) -> None:
    root = tmp_path / "site-packages" / "httpx"
    write(root, "_client.py")
    write(tmp_path / "site-packages", "six.py")
    assert run(tmp_path / "site-packages")[0] == ["httpx/_client.py", "six.py"]
    assert run(root)[0] == ["_client.py"]
    write(tmp_path, "node_modules/pkg/index.js")
    assert run(tmp_path / "node_modules")[0] == ["pkg/index.js"]


def test_hidden_files_and_directories(tmp_path: Path) -> None:
    write(tmp_path, ".eslintrc.js")
    write(tmp_path, ".github/scripts/release.py")
    write(tmp_path, "main.py")
    paths, reasons = run(tmp_path)
    assert paths == ["main.py"]
    assert reasons == {".eslintrc.js": "hidden", ".github": "hidden"}
    paths, _ = run(tmp_path, WalkConfig(include_hidden=True))
    assert paths == [".eslintrc.js", ".github/scripts/release.py", "main.py"]


def test_symlinks_are_reported_and_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, "secret_code.py")
    root = tmp_path / "repo"
    write(root, "real.py")
    (root / "link.py").symlink_to(root / "real.py")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    paths, reasons = run(root)
    assert paths == ["real.py"]
    assert reasons == {"link.py": "symlink", "linked_dir": "symlink", "loop": "symlink"}


# --- secrets -----------------------------------------------------------------------------------------


def test_secret_files_are_never_yielded_even_with_include_hidden(tmp_path: Path) -> None:
    names = [".env", ".env.local", "id_rsa", "id_ed25519.pub", "server.key", "cert.pem", ".npmrc", ".netrc"]
    names += ["credentials-prod.json", "client_secret.json", "app-secrets.yaml", "vault.kdbx"]
    for name in names:
        write(tmp_path, name, "TOKEN=abc\n")
        write(tmp_path, "pkg/" + name, "TOKEN=abc\n")
    write(tmp_path, "secrets.py", "def load() -> None: ...\n")  # a .py name alone is not a secret
    for include_hidden in (False, True):
        paths, reasons = run(tmp_path, WalkConfig(include_hidden=include_hidden))
        assert paths == ["secrets.py"]
        for name in names:
            assert reasons[name] == reasons["pkg/" + name] == "secret", name


def test_secret_content_is_detected_and_never_echoed(tmp_path: Path) -> None:
    key = write(tmp_path, "keys.py", f'KEY = """\n{PEM}"""\n').read_bytes()
    config = write(tmp_path, "config.py", f'API_KEY = "{STRIPE}"\n').read_bytes()
    for data, rule in ((key, "private key"), (config, "Stripe")):
        verdict = check_content(data)
        assert verdict is not None and verdict[0] == "secret"
        assert rule in verdict[1]
        assert "MIIE" not in verdict[1] and "4eC39" not in verdict[1]
    with pytest.raises(ValueError, match="secret") as err:
        read_source(tmp_path, "config.py")
    assert "4eC39" not in str(err.value)
    with pytest.raises(ValueError, match="secret"):
        read_source(tmp_path, "keys.py")


@pytest.mark.parametrize(
    "line",
    [
        "aws_key = 'AKIA" + "Q3EGRIXVBWZZ7HLA'",
        "token = 'ghp_" + "a" * 10 + "Zb9" + "c" * 30 + "'",
        "SLACK = 'xoxb-" + "1234567890-abcdefghij'",
        "google = 'AIza" + "SyD4e8Kq9rT2xWz1Lm3Np5Qr7St9Uv0Wx2Y'",
        "openai = 'sk-" + "Ab3De5Gh7Jk9Mn1Pq3St5Vw7Yz9Bc1Ef3Hj'",
        'DB_PASSWORD = "hunter2-Correct9-Horse"',
        'self.clientSecret = "q8Zr2Lx0Vt4Nw6Pb"',
        '{"api_key": "5f2b9c1e7d3a4b6c8e0f"}',
        "private_key: str = 'MIIBVgIBADANBgkqhkiG9w0'",
        "export AUTH_TOKEN='0a1b2c3d4e5f6a7b8c9d'",
    ],
)
def test_secret_rules(line: str) -> None:
    verdict = check_content(f"import os\n\n{line}\n".encode())
    assert verdict is not None and verdict[0] == "secret", line
    assert "line 3" in verdict[1]


@pytest.mark.parametrize(
    "line",
    [
        'API_KEY = "your-api-key-goes-here"',
        'PASSWORD = "<insert-password-here>"',
        'password = "changeme-changeme-1"',
        'SECRET_KEY = "xxxxxxxxxxxxxxxxxxxxxx"',
        'api_key = "${STRIPE_API_KEY_FROM_ENV}"',
        'secret = "{{ vault.secret_value }}"',
        "aws = 'AKIAIOSFODNN7EXAMPLE'",  # AWS's documented example key
        'API_KEY = os.environ["STRIPE_API_KEY"]',
        'password = "short"',
        'password = "correct horse battery staple"',  # spaces: prose, not a token
        'ACCESS_TOKEN_HEADER = "X-Access-Token-Header"',  # a plain identifier-like literal
        'if password == "0123456789abcdef0123":',  # a comparison, not an assignment
        "task-0123456789abcdef0123456789abcdef01 = 1",  # "sk-" inside a longer word
        'password_reset_url = "https://example.org/reset"',
    ],
)
def test_placeholders_and_lookalikes_are_not_secrets(line: str) -> None:
    assert check_content(f"{line}\n".encode()) is None, line


# --- content checks ----------------------------------------------------------------------------------


def test_binary_too_large_generated_minified() -> None:
    assert check_content(b"x = 1\n") is None
    assert check_content(b"abc\x00def") == ("binary", "NUL byte in the first 8 KB")
    reason = check_content(b"caf\xe9 = 1\n")
    assert reason is not None and reason[0] == "binary"
    assert check_content(b"x" * 101, max_file_bytes=100) == ("too_large", "101 bytes > 100")
    assert check_content(b"x" * 100, max_file_bytes=100) is None
    for header in (
        "// Code generated by protoc-gen-go. DO NOT EDIT.",
        "# @generated by torchgen",
        "/* Auto-generated file */",
        "# This file was automatically generated by tools/gen.py",
    ):
        verdict = check_content(f"\n\n{header}\nx = 1\n".encode())
        assert verdict is not None and verdict[0] == "generated", header
    assert check_content(("x = 1\n" * 5 + "# DO NOT EDIT\n").encode()) is None  # past the first 5 lines
    assert check_content(b'"""Test cases for reports generated by mypy."""\n') is None  # prose
    long_line = b"var a=" + b"1," * 3000 + b"2;\n"
    assert check_content(long_line) == ("minified", "a line of 6008 characters")
    dense = (b"x" * 400 + b"\n") * 10
    verdict = check_content(dense)
    assert verdict is not None and verdict[0] == "minified"
    assert check_content((b"x" * 400 + b"\n") * 2) is None  # under 2 KB
    assert check_content((b"x" * 60 + b"\n") * 1000) is None


def test_generated_by_name(tmp_path: Path) -> None:
    for rel in ("app.min.js", "lib-min.js", "main.bundle.js", "api.pb.go", "api_pb2.py", "api_pb2_grpc.py"):
        write(tmp_path, rel)
    write(tmp_path, "model.generated.ts")
    write(tmp_path, "app.js")
    paths, reasons = run(tmp_path)
    assert paths == ["app.js"]
    assert set(reasons.values()) == {"generated"}
    assert check_path("src/api_pb2.py") == "generated"


def test_walk_does_not_read_contents(tmp_path: Path) -> None:
    write(tmp_path, "big.py", "x = 1\n" * 100)
    write(tmp_path, "blob.py", b"\x00\x01\x02")  # binary: the indexer's check_content catches it
    write(tmp_path, "notes.md", "# notes\n")
    paths, reasons = run(tmp_path, WalkConfig(max_file_bytes=100))
    assert paths == ["blob.py"]
    assert reasons == {"big.py": "too_large", "notes.md": "unsupported"}


# --- languages -------------------------------------------------------------------------------------


def test_language_filter_and_header_sniffing(tmp_path: Path) -> None:
    write(tmp_path, "a.py")
    write(tmp_path, "b.go", "package b\n")
    write(tmp_path, "c.h", "int add(int a, int b);\n")
    write(tmp_path, "d.h", "#pragma once\n" + "\n" * 100 + "namespace d {\nclass Widget {};\n}\n")
    write(tmp_path, "e.hpp", "#pragma once\n")
    files = {f.path: f for f in walk(tmp_path)}
    assert {p: f.language for p, f in files.items()} == {
        "a.py": "python",
        "b.go": "go",
        "c.h": "c",
        "d.h": "cpp",
        "e.hpp": "cpp",
    }
    assert files["a.py"] == SourceFile("a.py", "python", 6, os.stat(tmp_path / "a.py").st_mtime_ns)
    paths, reasons = run(tmp_path, WalkConfig(languages=frozenset({"cpp"})))
    assert paths == ["d.h", "e.hpp"]
    assert reasons == {"a.py": "language", "b.go": "language", "c.h": "language"}
    paths, _ = run(tmp_path, WalkConfig(languages=frozenset({"c"})))
    assert paths == ["c.h"]


# --- order ---------------------------------------------------------------------------------------------


def test_walk_is_deterministic_and_sorted(tmp_path: Path) -> None:
    for rel in ("b.py", "a/z.py", "a-b.py", "a.py", "a/b/c.py", "A.py", "a0.py", "ab/x.py", "a/y.py"):
        write(tmp_path, rel)
    paths, _ = run(tmp_path)
    assert paths == sorted(paths)
    assert len(paths) == 9
    assert run(tmp_path)[0] == paths


# --- check_path and read_source ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "reason"),
    [
        ("src/app.py", None),
        ("./src/app.py", None),
        (".env", "secret"),
        ("config/.env.production", "secret"),
        ("deploy/server.key", "secret"),
        ("home/.ssh/id_rsa", "hidden"),
        ("id_rsa", "secret"),
        (".eslintrc.js", "hidden"),
        ("web/node_modules/react/index.js", "vendored"),
        ("lib/python3.11/site-packages/six.py", "vendored"),
        ("a/__pycache__/m.py", "vendored"),
        (".git/hooks/pre-commit.py", "ignored"),
        ("README.md", "unsupported"),
        ("static/app.min.js", "generated"),
        ("../etc/passwd.py", "unreadable"),
        ("src/../../x.py", "unreadable"),
        ("..\\x.py", "unreadable"),
        ("/etc/x.py", "unreadable"),
        ("C:/x.py", "unreadable"),
        ("", "unreadable"),
    ],
)
def test_check_path(rel: str, reason: str | None) -> None:
    assert check_path(rel) == reason


def test_check_path_include_hidden() -> None:
    assert check_path(".github/scripts/release.py", include_hidden=True) is None
    assert check_path(".git/x.py", include_hidden=True) == "ignored"
    assert check_path(".env", include_hidden=True) == "secret"


def test_read_source(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    write(root, "src/app.py", "print('hi')\n")
    write(root, ".env", "TOKEN=1\n")
    write(root, "big.py", "x = 1\n" * 100)
    write(root, "blob.py", b"\x00\x01")
    write(tmp_path, "outside.py", "leak = 1\n")
    (root / "escape.py").symlink_to(tmp_path / "outside.py")
    (root / "inside.py").symlink_to(root / "src" / "app.py")
    (root / "envlink.py").symlink_to(root / ".env")
    (root / "dirlink").symlink_to(tmp_path, target_is_directory=True)

    assert read_source(root, "src/app.py") == "print('hi')\n"
    assert read_source(root, "inside.py") == "print('hi')\n"  # a symlink that stays inside is fine
    for rel, message in (
        ("../outside.py", "leaves the repository"),
        ("src/../../outside.py", "leaves the repository"),
        (str(tmp_path / "outside.py"), "absolute"),
        ("escape.py", "outside the repository"),
        ("dirlink/outside.py", "outside the repository"),
        ("envlink.py", "secret"),
        (".env", "secret"),
        ("src", "unsupported"),
        ("blob.py", "binary"),
        ("", "empty"),
    ):
        with pytest.raises(ValueError, match=message):
            read_source(root, rel)
    with pytest.raises(ValueError, match="too_large"):
        read_source(root, "big.py", WalkConfig(max_file_bytes=100))
    with pytest.raises(FileNotFoundError):
        read_source(root, "missing.py")
