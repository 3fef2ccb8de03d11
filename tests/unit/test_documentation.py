"""The manual stays true to the tree: every relative link and anchor resolves, every documented command exists.

Over README.md, every docs/*.md and the folder READMEs that document commands (model_store/, deploy/k8s/):
- a relative link `[text](path)` or `[text](path#anchor)` names a file or folder that exists (relative to the
  markdown file), and an anchor names a heading of the target file (of the same file for `(#anchor)`), by GitHub's
  slug rules; http(s), mailto and other URLs are skipped;
- in fenced code blocks and inline code, `python -m X.Y` names a module of the repository's own packages,
  `make T` a target of the Makefile, `beem SUB` a subcommand the `beem` CLI defines (read from the source's
  `add_parser` calls, without importing torch), and `bash PATH` a script that exists;
- README.md links to every docs/*.md page.

The checks are plain functions returning problems, so the tests at the end can feed each a broken page and see it
complain.
"""

from __future__ import annotations

import ast
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
FOLDER_READMES = [ROOT / "model_store" / "README.md", ROOT / "deploy" / "k8s" / "README.md"]
MARKDOWN = [ROOT / "README.md", *DOCS, *(path for path in FOLDER_READMES if path.exists())]
OWN_PACKAGES = ("beem", "service", "bench", "loadtest", "tests")
CLI_PACKAGES = ("beem", "service", "loadtest")  # what the `beem` console script is built from

FENCE = re.compile(r"^\s*(```|~~~)")
# A link or image: [text](target) or [text](target "title"); the text may hold inline code and span lines.
LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`((?:[^`\n]|\n(?![ \t]*\n))+)`")  # within a paragraph: no blank line inside
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t#]*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
PYTHON_MODULE = re.compile(r"(?<![\w-])python(?:3(?:\.\d+)?)?[ \t]+-m[ \t]+([A-Za-z_][\w.]*)")
MAKE_TARGET_TOKEN = re.compile(r"[A-Za-z0-9_][\w.-]*")
# Where a command starts: a line's (or a span's) start or after ; & | ( and a `$ ` prompt, past VAR=value
# assignments, and for a program optionally its directory (`.venv/bin/beem`). `kubectl -n beem rollout` is no
# `beem` command.
COMMAND_START = r"(?:^|(?<=[;&|(`]))[ \t]*(?:\$[ \t]+)?(?:[A-Za-z_][A-Za-z0-9_]*=\S*[ \t]+)*"
MAKE = re.compile(COMMAND_START + r"make[ \t]+([^\n;&|)#`]*)", re.MULTILINE)
BEEM = re.compile(COMMAND_START + r"(?:[^\s;&|()]*/)?beem[ \t]+([A-Za-z][\w-]*)", re.MULTILINE)
BASH_SCRIPT = re.compile(r"(?:^|(?<=[\s;&|(`]))(?:bash|sh)[ \t]+([\w./-]+\.sh)\b")


@dataclass(frozen=True)
class Snippet:
    """Code from a page: a fenced block's body or an inline code span, with the line it starts on."""

    text: str
    line: int
    language: str  # the fence's info string ("bash", "python", ...); "inline" for inline code


@dataclass(frozen=True)
class Page:
    path: Path
    prose: str  # the page with every fenced block's lines blanked (line numbers kept)
    snippets: tuple[Snippet, ...]
    headings: tuple[str, ...]


def _strip_shell_comments(code: str) -> str:
    """Drop `# ...` comments (at a line's start or after whitespace) so prose in them is not read as commands."""
    return "\n".join(re.sub(r"(^|\s)#.*$", r"\1", line) for line in code.split("\n"))


def read_page(path: Path, text: str | None = None) -> Page:
    text = path.read_text(encoding="utf-8") if text is None else text
    prose_lines: list[str] = []
    snippets: list[Snippet] = []
    headings: list[str] = []
    fence: str | None = None
    body: list[str] = []
    language, start = "", 0
    for number, line in enumerate(text.split("\n"), start=1):
        opening = FENCE.match(line)
        if fence is None and opening:
            fence, language, body, start = opening.group(1), line.strip()[3:].strip(), [], number + 1
            prose_lines.append("")
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip()[3:].strip():
                snippets.append(Snippet("\n".join(body), start, language or "text"))
                fence = None
            else:
                body.append(line)
            prose_lines.append("")
        else:
            prose_lines.append(line)
            heading = HEADING.match(line)
            if heading:
                headings.append(heading.group(2))
    prose = "\n".join(prose_lines)
    for match in INLINE_CODE.finditer(prose):
        snippets.append(Snippet(match.group(1), prose.count("\n", 0, match.start()) + 1, "inline"))
    return Page(path, prose, tuple(snippets), tuple(headings))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text lowercased, punctuation but '-' and '_' dropped,
    spaces made '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"(?<!\w)_+|_+(?!\w)", "", text)  # emphasis underscores, not snake_case
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Page) -> set[str]:
    """Every anchor of a page: heading slugs (a repeated one gets -1, -2, ... as on GitHub) and HTML anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in page.headings:
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    found.update(HTML_ANCHOR.findall(page.prose))
    return found


def _where(page: Page, line: int) -> str:
    return f"{page.path.relative_to(ROOT) if page.path.is_relative_to(ROOT) else page.path}:{line}"


def links(page: Page) -> list[tuple[int, str]]:
    """(line, target) of every markdown link outside code; inline code is blanked first, link text kept."""
    blanked = INLINE_CODE.sub(lambda match: "`" + re.sub(r"[^\n]", "x", match.group(1)) + "`", page.prose)
    return [(blanked.count("\n", 0, match.start()) + 1, match.group(2)) for match in LINK.finditer(blanked)]


def link_problems(page: Page, read: dict[Path, Page] | None = None) -> list[str]:
    read = {} if read is None else read
    problems = []
    for line, target in links(page):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # http(s), mailto, ...: not checked offline
        path_part, _, anchor = target.partition("#")
        where = _where(page, line)
        if path_part:
            resolved = (page.path.parent / unquote(path_part)).resolve()
            if not resolved.exists():
                problems.append(f"{where}: link ({target}): {path_part} does not exist (relative to the page)")
                continue
        else:
            resolved = page.path.resolve()
        if not anchor:
            continue
        if resolved.is_dir() or resolved.suffix.lower() != ".md":
            problems.append(f"{where}: link ({target}): an anchor into {path_part}, which is not a markdown file")
            continue
        target_page = read.get(resolved) or read.setdefault(resolved, read_page(resolved))
        if unquote(anchor) not in anchors(target_page):
            problems.append(
                f"{where}: link ({target}): no heading in {target_page.path.name} has the anchor #{anchor} "
                f"(its anchors: {', '.join(sorted(anchors(target_page)))})"
            )
    return problems


def _commands_text(snippet: Snippet) -> str:
    return snippet.text if snippet.language == "inline" else _strip_shell_comments(snippet.text)


def _module_exists(module: str, root: Path) -> bool:
    base = root.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file() or (base / "__main__.py").is_file()


def python_module_problems(page: Page, root: Path = ROOT) -> list[str]:
    problems = []
    for snippet in page.snippets:
        text = _commands_text(snippet)
        for match in PYTHON_MODULE.finditer(text):
            module = match.group(1).rstrip(".")
            if module.split(".")[0] in OWN_PACKAGES and not _module_exists(module, root):
                line = snippet.line + text.count("\n", 0, match.start())
                base = module.replace(".", "/")
                problems.append(
                    f"{_where(page, line)}: `python -m {module}`: no {base}.py, {base}/__init__.py or "
                    f"{base}/__main__.py in the repository"
                )
    return problems


def makefile_targets(makefile: Path) -> set[str]:
    targets: set[str] = set()
    for line in makefile.read_text(encoding="utf-8").split("\n"):
        rule = re.match(r"^([A-Za-z0-9_][\w.\- ]*?)\s*::?(?!=)", line)
        if rule:
            targets.update(rule.group(1).split())
    return targets


def make_target_problems(page: Page, targets: set[str]) -> list[str]:
    problems = []
    for snippet in page.snippets:
        text = _commands_text(snippet)
        for match in MAKE.finditer(text):
            line = snippet.line + text.count("\n", 0, match.start())
            for token in match.group(1).split():
                if "=" in token or token.startswith("-"):
                    continue  # a variable assignment or an option
                if not MAKE_TARGET_TOKEN.fullmatch(token):
                    break
                if token not in targets:
                    problems.append(f"{_where(page, line)}: `make {token}`: the Makefile defines no target {token!r}")
    return problems


def cli_subcommands(root: Path = ROOT) -> set[str]:
    """Every subcommand name the `beem` CLI's modules register with argparse (`x.add_parser("name", ...)`)."""
    names: set[str] = set()
    for package in CLI_PACKAGES:
        for source in sorted((root / package).rglob("*.py")):
            for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"), filename=str(source))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_parser"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    names.add(node.args[0].value)
    return names


def beem_subcommand_problems(page: Page, subcommands: set[str]) -> list[str]:
    problems = []
    for snippet in page.snippets:
        if snippet.language.split()[0:1] in (["python"], ["py"]):
            continue  # `from beem import ...` is Python, not the CLI
        text = _commands_text(snippet)
        for match in BEEM.finditer(text):
            name = match.group(1)
            if name not in subcommands:
                line = snippet.line + text.count("\n", 0, match.start())
                problems.append(
                    f"{_where(page, line)}: `beem {name}`: the beem CLI has no subcommand {name!r} "
                    f"(it has: {', '.join(sorted(subcommands))})"
                )
    return problems


def script_problems(page: Page, root: Path = ROOT) -> list[str]:
    problems = []
    for snippet in page.snippets:
        text = _commands_text(snippet)
        for match in BASH_SCRIPT.finditer(text):
            script = match.group(1)
            if not script.startswith("/") and not (root / script).is_file():
                line = snippet.line + text.count("\n", 0, match.start())
                problems.append(f"{_where(page, line)}: `bash {script}`: no such script in the repository")
    return problems


def _ids(paths: list[Path]) -> list[str]:
    return [str(path.relative_to(ROOT)) for path in paths]


@pytest.fixture(scope="module")
def subcommands() -> set[str]:
    return cli_subcommands()


def test_the_manual_has_pages_and_a_beem_console_script() -> None:
    assert DOCS, "docs/ holds no *.md page"
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert "beem" in scripts, "pyproject.toml declares no `beem` console script"
    assert cli_subcommands(), f"found no add_parser(...) subcommand in {', '.join(CLI_PACKAGES)}"


@pytest.mark.parametrize("path", MARKDOWN, ids=_ids(MARKDOWN))
def test_relative_links_and_anchors_resolve(path: Path) -> None:
    problems = link_problems(read_page(path))
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", MARKDOWN, ids=_ids(MARKDOWN))
def test_documented_python_modules_exist(path: Path) -> None:
    problems = python_module_problems(read_page(path))
    assert not problems, "documented modules that do not exist:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", MARKDOWN, ids=_ids(MARKDOWN))
def test_documented_make_targets_exist(path: Path) -> None:
    problems = make_target_problems(read_page(path), makefile_targets(ROOT / "Makefile"))
    assert not problems, "documented make targets that do not exist:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", MARKDOWN, ids=_ids(MARKDOWN))
def test_documented_beem_subcommands_exist(path: Path, subcommands: set[str]) -> None:
    problems = beem_subcommand_problems(read_page(path), subcommands)
    assert not problems, "documented beem subcommands that do not exist:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", MARKDOWN, ids=_ids(MARKDOWN))
def test_documented_scripts_exist(path: Path) -> None:
    problems = script_problems(read_page(path))
    assert not problems, "documented scripts that do not exist:\n" + "\n".join(problems)


def test_readme_links_every_docs_page() -> None:
    readme = read_page(ROOT / "README.md")
    linked = {
        (readme.path.parent / unquote(target.partition("#")[0])).resolve()
        for _, target in links(readme)
        if not SCHEME.match(target) and target.partition("#")[0]
    }
    missing = [str(page.relative_to(ROOT)) for page in DOCS if page.resolve() not in linked]
    assert not missing, f"README.md does not link to: {', '.join(missing)}"


# The checks themselves: each one complains about a broken page.


def _fake_page(tmp_path: Path, text: str, name: str = "page.md") -> Page:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return read_page(path)


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Serving: measured latency and throughput", "serving-measured-latency-and-throughput"),
        ("Against the issue's targets", "against-the-issues-targets"),
        ("docker compose: server, Prometheus, Grafana", "docker-compose-server-prometheus-grafana"),
        ("In-process: the engine against a plain forward", "in-process-the-engine-against-a-plain-forward"),
        ("The `group_selection` rule", "the-group_selection-rule"),
        ("**Bold** and [a link](x.md)", "bold-and-a-link"),
    ],
)
def test_github_slugs(heading: str, slug: str) -> None:
    assert github_slug(heading) == slug


def test_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n", encoding="utf-8")
    (tmp_path / "folder").mkdir()
    page = _fake_page(
        tmp_path,
        "# Page\n\n## Here\n\n[ok](other.md#a-section) [ok](#here) [ok](folder/) [web](https://example.com/x#y)\n"
        "[missing file](nowhere.md) and [missing\nanchor](other.md#no-such-section), [self](#gone)\n\n"
        "```bash\n[not a link](in-code.md)\n```\n`[not a link](inline.md)` ![image](missing.png)\n",
    )
    problems = link_problems(page)
    assert len(problems) == 4, problems
    assert "page.md:6: link (nowhere.md): nowhere.md does not exist" in problems[0]
    assert "page.md:6: link (other.md#no-such-section): no heading in other.md has the anchor" in problems[1]
    assert "page.md:7: link (#gone)" in problems[2]
    assert "page.md:12: link (missing.png)" in problems[3]


def test_module_check_finds_a_missing_own_module_and_ignores_others(tmp_path: Path) -> None:
    page = _fake_page(
        tmp_path,
        "```bash\npython -m bench.standard_comparison --rates 30\n.venv/bin/python -m bench.no_such_bench\n"
        "python -m pytest -q  # python -m bench.commented_out\n```\n"
        "Run `python3 -m beem.no_such\nmodule` or `python -m http.server`.\n",
    )
    problems = python_module_problems(page)
    assert len(problems) == 2, problems
    assert "page.md:3: `python -m bench.no_such_bench`" in problems[0]
    assert "page.md:6: `python -m beem.no_such`" in problems[1]


def test_make_check_finds_a_missing_target(tmp_path: Path) -> None:
    page = _fake_page(tmp_path, "```bash\nmake run    # make believe\nmake lint nonsense\n```\n`make tset`\n")
    problems = make_target_problems(page, makefile_targets(ROOT / "Makefile"))
    assert [problem.split(": ", 1)[1] for problem in problems] == [
        "`make nonsense`: the Makefile defines no target 'nonsense'",
        "`make tset`: the Makefile defines no target 'tset'",
    ]
    assert {"run", "test", "caption-data"} <= makefile_targets(ROOT / "Makefile")


def test_beem_check_finds_a_missing_subcommand(tmp_path: Path, subcommands: set[str]) -> None:
    page = _fake_page(
        tmp_path,
        "```bash\n.venv/bin/beem build --preset default\nbeem deploy --now\n```\n"
        "```python\nfrom beem import cli\n```\n`beem serve --bundle x`, `beem-serve`, `beem/cli.py`, `beem servr`\n",
    )
    problems = beem_subcommand_problems(page, subcommands)
    assert len(problems) == 2, problems
    assert "page.md:3: `beem deploy`" in problems[0]
    assert "page.md:8: `beem servr`" in problems[1]


def test_script_check_finds_a_missing_script(tmp_path: Path) -> None:
    page = _fake_page(tmp_path, "`bash bench/gpu/run_cuda_checks.sh classification`, `bash bench/gpu/gone.sh`\n")
    problems = script_problems(page)
    assert len(problems) == 1 and "`bash bench/gpu/gone.sh`" in problems[0], problems
