"""README.md and docs/*.md say only what exists.

- Every relative link (and image) resolves to a file or folder of the repository, and a `#anchor`
  to a heading of the page it names (GitHub's heading ids).
- Every `unet-jax COMMAND --flag` shown, in a code block or in inline code, names a command and
  flags of the CLI's own argparse parser; a flag shown alone in inline code (`--remat blocks`)
  must be an option of some `unet-jax` command. The convention that makes that check possible:
  other programs' flags are written with their command (`python -m benchmarks.run --rounds 3`,
  `XLA_FLAGS=--xla_...`), never alone.
- The README stays a front page (issue 21: at most 250 lines).
"""

import argparse
import re
from pathlib import Path

import pytest

from unet_jax.cli import build_parser


def _repository_root() -> Path:
    for folder in Path(__file__).resolve().parents:
        if (folder / "pyproject.toml").is_file():
            return folder
    raise RuntimeError(f"no pyproject.toml above {__file__}")


ROOT = _repository_root()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
LINK = re.compile(r"!?\[([^\]]*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
COMMAND = re.compile(r"(?:^|(?<=[\s\"'(=]))unet-jax\s+(.+)")
FLAG = re.compile(r"^--[a-z0-9][a-z0-9-]*$")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def split_page(text: str) -> tuple[str, list[str]]:
    """The page's prose (code blocks blanked, so line numbers hold) and its code blocks' lines."""
    prose, code, inside = [], [], False
    for line in text.splitlines():
        if FENCE.match(line):
            inside = not inside
            prose.append("")
            continue
        (code if inside else prose).append(line)
        if inside:
            prose.append("")
    return "\n".join(prose), code


def inline_code(prose: str) -> list[str]:
    """The inline code spans of the prose; a span never crosses a blank line (a paragraph's end)."""
    return [match.group(2) for match in INLINE_CODE.finditer(prose) if "\n\n" not in match.group(2)]


def without_inline_code(prose: str) -> str:
    return INLINE_CODE.sub(lambda match: "" if "\n\n" not in match.group(2) else match.group(0), prose)


def slug(heading: str) -> str:
    """GitHub's id for a heading: its text lowercased, punctuation dropped, spaces to hyphens."""
    text = LINK.sub(lambda match: match.group(1), heading)
    text = re.sub(r"[`*_]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _ = split_page(page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    ids = set()
    for line in prose.splitlines():
        heading = HEADING.match(line)
        if not heading:
            continue
        base = slug(heading.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        ids.add(base if count == 0 else f"{base}-{count}")
    return ids


def broken_links(page: Path) -> list[str]:
    prose, _ = split_page(page.read_text(encoding="utf-8"))
    problems = []
    for match in LINK.finditer(without_inline_code(prose)):
        target = match.group(2)
        if SCHEME.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            problems.append(f"{page.name}: link to {target}: {linked} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{page.name}: link to {target}: {linked.name} has no heading with the id #{anchor}")
    return problems


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the unet-jax parser has no subcommands")


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _flag(token: str):
    """`--tile-size` from `[--tile-size`, `--steps=50`, `--overwrite]`, ...; None if the token is none."""
    flag = token.strip("[](){}\"',;:.").split("=", 1)[0]
    return flag if FLAG.match(flag) else None


def command_problems(text: str, parser: argparse.ArgumentParser, where: str) -> list[str]:
    """Every `unet-jax COMMAND --flag ...` in the text against the parser (a shell comment ends it)."""
    commands = _commands(parser)
    problems = []
    for match in COMMAND.finditer(text):
        words = match.group(1).split()
        name = words[0].strip("\"'`")
        if _flag(name):  # unet-jax --version
            sub, rest = parser, words
        elif name in commands:
            sub, rest = commands[name], words[1:]
        else:
            problems.append(f"{where}: `unet-jax {name}`: no such command (the parser has {', '.join(sorted(commands))})")
            continue
        for word in rest:
            if word.startswith("#"):
                break
            flag = _flag(word) if word.lstrip("[(\"'").startswith("--") else None
            if flag and flag not in _options(sub):
                problems.append(f"{where}: `unet-jax {name}`: {flag} is not an option of this command")
            if word.endswith(("\"", "'")):  # the end of a quoted command line (--command="unet-jax ...")
                break
    return problems


def lone_flag_problems(spans: list[str], parser: argparse.ArgumentParser, where: str) -> list[str]:
    """Inline code that is only flags (`--loss ce`, `--features 64 --depth 4`): each an option of some command."""
    known = _options(parser).union(*(_options(sub) for sub in _commands(parser).values()))
    problems = []
    for span in spans:
        if not span.startswith("--"):
            continue
        for word in span.split():
            flag = _flag(word) if word.startswith("--") else None
            if word.startswith("--") and flag is None:
                problems.append(f"{where}: `{span}`: {word} is not a unet-jax flag; show another program's flag with "
                                f"its command (`python -m benchmarks.run --rounds 3`, `XLA_FLAGS=--xla_...`)")
            elif flag and flag not in known:
                problems.append(f"{where}: `{span}`: {flag} is no option of any unet-jax command")
    return problems


def flag_problems(page: Path, parser: argparse.ArgumentParser) -> list[str]:
    prose, code = split_page(page.read_text(encoding="utf-8"))
    spans = inline_code(prose)
    code_lines = "\n".join(code).replace("\\\n", " ").splitlines()  # a command continued over lines is one
    problems = []
    for line in code_lines:
        problems += command_problems(line, parser, f"{page.name} (code block)")
    for span in spans:
        problems += command_problems(" ".join(span.split()), parser, f"{page.name} (inline code)")
    return problems + lone_flag_problems([" ".join(span.split()) for span in spans], parser, page.name)


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


def test_the_pages_exist():
    assert (ROOT / "README.md").is_file()
    assert len(PAGES) > 1, f"no pages in {ROOT / 'docs'}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_unet_jax_flag_shown_exists(page, parser):
    assert flag_problems(page, parser) == []


def test_the_readme_is_a_front_page():
    lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/ (at most {README_MAX_LINES})"


def test_the_pages_show_commands_and_links(parser):
    """The checks above read something: the README links into docs/ and shows flagged commands."""
    prose, code = split_page((ROOT / "README.md").read_text(encoding="utf-8"))
    assert any(match.group(2).startswith("docs/") for match in LINK.finditer(prose))
    assert any(COMMAND.search(line) and " --" in line for line in code)


def test_a_wrong_link_anchor_command_or_flag_is_reported(tmp_path, parser):
    (tmp_path / "other.md").write_text("# Other page\n\n## A heading, with `code`\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[fine](other.md#a-heading-with-code) [missing](nowhere.md) [no heading](other.md#nope) "
        "[here](#page) [not here](#elsewhere) [web](https://example.org/x.md)\n\n"
        "Run `unet-jax train --steps 5 --no-such-flag` or `unet-jax frobnicate`; `--remat blocks` and "
        "`--also-not-a-flag 3`.\n\n"
        "```bash\nunet-jax predict --weights W a.png --output out/ \\\n    --bad-continued   # --in-a-comment\n```\n",
        encoding="utf-8")
    links = broken_links(page)
    assert len(links) == 3, links
    assert all(any(word in problem for problem in links) for word in ("nowhere.md", "#nope", "#elsewhere"))
    flags = flag_problems(page, parser)
    assert len(flags) == 4, flags
    for expected in ("--no-such-flag", "frobnicate", "--also-not-a-flag", "--bad-continued"):
        assert any(expected in problem for problem in flags), (expected, flags)
