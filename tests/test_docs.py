"""The docs stay true: links resolve, quoted commands exist, named tests exist, pages are indexed.

Checked in README.md and docs/*.md:
- every relative link points to an existing file (and an existing heading, for `page.md#anchor`);
- every `cfnet ...` command line in a code block, fenced or indented (and every inline code
  span starting with `cfnet `) names existing commands and options, resolved on the real
  typer/click tree, and `cfnet <command> --help` exits 0. A doc quoting a command another
  engineer has not committed yet fails here, on purpose;
- every `tests/<file>.py::<test>` a doc names exists;
- docs/README.md indexes every page of docs/, and the operator guide links every example file.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

from tests.cli_paths import UnknownCommand, command_help_ok, resolve_all

ROOT = Path(__file__).parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "sh", "bash", "shell", "console", "text"}

FENCE = re.compile(r"^(```+|~~~+)[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
TEST_REF = re.compile(r"\btests/[\w/]+\.py(?:::\w+)?")


def _id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(2).lower(), m.group(3)) for m in FENCE.finditer(text)]


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return FENCE.sub("", text)


# -- links ----------------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    body = prose(path.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", body, re.M)}


def links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", prose(path.read_text()))
    return [m.group(1) for m in LINK.finditer(text)]


@pytest.mark.parametrize("doc", DOCS, ids=_id)
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{_id(doc)}: broken links: {broken}"


# -- quoted cfnet command lines -------------------------------------------------------------------

PREFIX_WORDS = {"sudo", "exec", "time", "env", "$", "#"}


def _segments(line: str) -> list[list[str]]:
    """Words of each simple command of a shell line (split at &&, ||, ;, |), redirections cut."""
    out = []
    for part in re.split(r"&&|\|\||;|\s\|\s", line):
        words = []
        for word in part.split():
            if word[0] in "<>" or word[:2] in ("2>", "1>", "&>"):
                break
            words.append(word)
        if words:
            out.append(words)
    return out


def cfnet_args(words: list[str]) -> list[str] | None:
    """The arguments after `cfnet` when these words run cfnet, else None."""
    i = 0
    while i < len(words):
        w = words[i]
        if w in PREFIX_WORDS or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w):
            i += 1
        elif words[i:i + 3] == ["ip", "netns", "exec"]:
            i += 4
        else:
            break
    if i >= len(words):
        return None
    w = words[i]
    if w == "cfnet" or w.endswith("/bin/cfnet"):
        return words[i + 1:]
    if Path(w).name.startswith("python") and words[i + 1:i + 3] == ["-m", "cfnet"]:
        return words[i + 3:]
    return None


def _logical_lines(body: str) -> list[str]:
    """Lines with comments removed and backslash continuations joined."""
    lines, pending = [], ""
    for raw in body.splitlines():
        line = re.sub(r"(^|\s)#(\s.*)?$", "", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    if pending:
        lines.append(pending)
    return lines


def quoted_commands(doc: Path) -> list[list[str]]:
    """Argument lists of every cfnet command line quoted in `doc`."""
    text = doc.read_text()
    found = []
    for language, body in code_blocks(text):
        if language not in SHELL_LANGUAGES:
            continue
        for line in _logical_lines(body):
            for words in _segments(line):
                args = cfnet_args(words)
                if args is not None:
                    found.append(args)
    outside = prose(text)
    # indented code blocks (four spaces or a tab): only lines that run cfnet, to stay clear of
    # indented list continuations
    indented = [line for line in outside.splitlines() if re.match(r"^( {4,}|\t)\S", line)]
    for line in _logical_lines("\n".join(indented)):
        for words in _segments(line):
            args = cfnet_args(words)
            if args is not None:
                found.append(args)
    for m in INLINE_CODE.finditer(outside):
        words = m.group(2).split()
        if words and words[0] == "cfnet":
            found.append(words[1:])
    return found


def _all_quoted() -> list[tuple[Path, list[str]]]:
    return [(doc, args) for doc in DOCS for args in quoted_commands(doc)]


def test_the_docs_quote_cfnet_commands() -> None:
    """The extraction works: the README's first command and the tour are found."""
    readme = [" ".join(a) for a in quoted_commands(ROOT / "README.md")]
    assert "lab demo" in readme and "lab push backend -i 2" in readme
    guide = [" ".join(a) for a in quoted_commands(ROOT / "docs" / "operator-guide.md")]
    assert any(a.startswith("certs generate --dir /etc/cfnet/certs --server-name") for a in guide)


@pytest.mark.parametrize("doc", DOCS, ids=_id)
def test_quoted_cfnet_commands_exist(doc: Path) -> None:
    errors = []
    for args in quoted_commands(doc):
        try:
            resolve_all(args)
        except UnknownCommand as e:
            errors.append(f"`cfnet {' '.join(args)}`: {e}")
    assert not errors, f"{_id(doc)}: " + "\n".join(errors)


def test_every_quoted_command_has_working_help() -> None:
    paths = set()
    for _, args in _all_quoted():
        try:
            paths.update(tuple(path) for path, _ in resolve_all(args))
        except UnknownCommand:
            continue  # reported by test_quoted_cfnet_commands_exist
    assert ("lab", "demo") in paths
    failed = {}
    for path in sorted(paths):
        ok, output = command_help_ok(list(path))
        if not ok:
            failed[" ".join(path)] = output[-500:]
    assert not failed, failed


def test_an_unknown_command_or_option_is_caught() -> None:
    """The checker can fail: made-up commands and options are reported."""
    for args in (["lab", "explode"], ["policy", "add", "--colour", "red"], ["no-such-role"],
                 ["silk-daemon", "run/stop"], ["garden-hook", "--action=up", "--verbose"],
                 ["cni", "flannel"]):
        with pytest.raises(UnknownCommand):
            resolve_all(args)
    resolve_all(["garden-hook", "--configFile=adapter.json", "--action", "up", "--handle", "H"])


# -- tests the docs name --------------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOCS, ids=_id)
def test_named_tests_exist(doc: Path) -> None:
    missing = []
    for ref in sorted(set(TEST_REF.findall(doc.read_text()))):
        file, _, name = ref.partition("::")
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{ref}: no such file")
        elif name and not re.search(rf"^(async )?def {name}\(", path.read_text(), re.M):
            missing.append(f"{ref}: no such test")
    assert not missing, f"{_id(doc)}: {missing}"


# -- indexes --------------------------------------------------------------------------------------


def test_docs_index_lists_every_page() -> None:
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in links(index)}
    pages = {p.resolve() for p in (ROOT / "docs").iterdir() if p.is_file() and p != index}
    missing = sorted(p.name for p in pages - linked)
    assert not missing, f"docs/README.md does not link: {missing}"


def test_operator_guide_links_every_example() -> None:
    guide = ROOT / "docs" / "operator-guide.md"
    linked = {(guide.parent / t.partition("#")[0]).resolve() for t in links(guide)}
    examples = {p.resolve() for p in (ROOT / "examples").rglob("*") if p.is_file()}
    missing = sorted(str(p.relative_to(ROOT)) for p in examples - linked)
    assert not missing, f"docs/operator-guide.md does not link: {missing}"


def test_pip_install_ships_every_data_file() -> None:
    """The operator guide installs with pip: data files the code reads must be package data."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"].get("package-data", {}).get("cfnet", [])
    package = ROOT / "cfnet"
    data = [p.relative_to(package).as_posix() for p in package.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert data, "expected at least the OpenAPI document"
    unshipped = [d for d in data
                 if not any(fnmatch.fnmatch(d, g) or fnmatch.fnmatch(d, g.removeprefix("**/"))
                            for g in globs)]
    assert not unshipped, f"not in [tool.setuptools.package-data] cfnet: {unshipped}"
