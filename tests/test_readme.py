"""The README and docs/ name only things that exist: every ``changenet_trt`` dotted name, file
path, ``from changenet_trt... import`` and relative link resolves, the layout list in
docs/design.md matches the package tree, the README is a front page (under 300 lines, linking
every docs/ page) whose set-up commands are the Makefile's and CI's, and measured figures live
only in benchmarks/RESULTS.md. And what pyproject.toml makes every user install, the package
imports."""

import argparse
import ast
import functools
import importlib
import os
import re

import pytest

import changenet_trt
from changenet_trt.cli import build_parser
from changenet_trt.gpu.trt import PrecisionPath

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.dirname(changenet_trt.__file__)
DOCS_DIR = os.path.join(ROOT, "docs")


def read(relpath):
    with open(os.path.join(ROOT, relpath), encoding="utf-8") as handle:
        return handle.read()


#: the pages kept true here: README.md and every docs/*.md, by path relative to the root
PAGES = ["README.md"] + sorted("docs/" + n for n in os.listdir(DOCS_DIR) if n.endswith(".md"))
TEXTS = {page: read(page) for page in PAGES}
README = TEXTS["README.md"]


def found(pattern, flags=0):
    """Sorted (page, match) pairs of ``pattern`` over every page (groups joined as a tuple)."""
    return sorted({(page, m) for page, text in TEXTS.items() for m in re.findall(pattern, text, flags)})


DOTTED = found(r"changenet_trt(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
PATHS = sorted({(page, p.rstrip(".")) for page, p in found(r"changenet_trt/[A-Za-z0-9_./]*")})
FROM_IMPORTS = found(r"^\s*from (changenet_trt[\w.]*) import ([\w, ]+)$", re.MULTILINE)


def page_id(value):
    return "-".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def resolve(dotted):
    """The object a dotted name names: the longest importable module prefix, then attributes.
    Raises ImportError/AttributeError when it names nothing."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as exc:
            if exc.name is None or not ".".join(parts[:cut]).startswith(exc.name):
                raise  # the module exists but one of its own imports is missing
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def test_the_pages_name_things():
    assert len(DOTTED) >= 10 and PATHS and FROM_IMPORTS
    assert len(PAGES) >= 5, PAGES


@pytest.mark.parametrize("page,dotted", DOTTED, ids=page_id)
def test_dotted_name_exists(page, dotted):
    resolve(dotted)


@pytest.mark.parametrize("page,path", PATHS, ids=page_id)
def test_path_exists(page, path):
    assert os.path.exists(os.path.join(ROOT, path)), "{}: {}".format(page, path)


@pytest.mark.parametrize("page,module,names", [(p, m, n) for p, (m, n) in FROM_IMPORTS], ids=page_id)
def test_from_import_works(page, module, names):
    for name in names.split(","):
        resolve(module + "." + name.strip())


def test_resolve_refuses_names_that_do_not_exist():
    with pytest.raises((ImportError, AttributeError)):
        resolve("changenet_trt.no_such_module.Thing")
    with pytest.raises(AttributeError):
        resolve("changenet_trt.api.no_such_function")


FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)


def prose(text):
    """``text`` without its fenced code blocks (commands and what they print)."""
    return FENCE.sub("", text)


def anchors(text):
    """The anchors GitHub gives the headings of a Markdown page: lowercase, punctuation but ``-``
    and ``_`` dropped, spaces as ``-``, a repeat suffixed ``-1``, ``-2``, ..."""
    seen = {}
    result = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(text), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else "{}-{}".format(slug, count))
    return result


def links(page):
    """The relative links of a page, outside code blocks: [(target path from the root or "" for
    the page itself, anchor or "")]."""
    result = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(TEXTS[page])):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: outside the repository
        path, _, anchor = target.partition("#")
        if path:
            path = os.path.normpath(os.path.join(os.path.dirname(page), path))
        result.append((path, anchor))
    return result


def test_anchors_follow_githubs_rule():
    text = "# A `prepare`: static (CPU, no TensorRT)\n## `make demo` / x\n## Same\n## Same\n```\n# not a heading\n```\n"
    assert anchors(text) == {"a-prepare-static-cpu-no-tensorrt", "make-demo--x", "same", "same-1"}


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    for path, anchor in links(page):
        target = path or page
        assert os.path.exists(os.path.join(ROOT, target)), "{}: link to missing {}".format(page, target)
        if anchor and target.endswith(".md"):
            assert anchor in anchors(read(target)), "{}: no heading #{} in {}".format(page, anchor, target)


def test_the_readme_links_every_docs_page():
    linked = {path for path, _ in links("README.md")}
    docs = [page for page in PAGES if page.startswith("docs/")]
    assert docs and not [page for page in docs if page not in linked], "docs pages the README does not link"


def test_the_readme_is_a_front_page():
    assert README.count("\n") < 300


def test_the_readme_set_up_commands_are_the_makefiles_and_cis():
    """The README opens with two commands, ``make demo`` and ``make test``; both are targets of
    the Makefile and CI runs the second."""
    first_block = FENCE.search(README).group(0)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:-1]]
    assert commands == ["make demo", "make test"]
    makefile = read("Makefile")
    for target in ("demo", "test"):
        assert re.search(r"^{}:".format(target), makefile, re.MULTILINE), target
    ci_commands = [line.strip() for line in read(".ci/run").splitlines() if not line.lstrip().startswith("#")]
    assert "make test" in ci_commands


#: a measured figure: a number (or range), a space and the unit of a speed, a time, a memory peak
#: or an accuracy (pairs/s, ms, s, seconds, minutes, GB, dB), or a count of tests. Names are not
#: hit ("Orin Nano 8GB", "16s that are not the batch"); facts with such a unit (a default, a
#: limit) are written in code (`--warmUp 200`) or in words ("under ten minutes").
MEASURED = re.compile(
    r"(?<![\w.])\d+(?:[.,]\d+)?(?:-\d+(?:\.\d+)?)? "
    r"(?:pairs/s|ms|s|seconds?|min|minutes?|GB|dB|tests)(?![\w/])")


def measured_figures(text):
    """The measured figures in ``text``'s prose: outside code blocks and inline code."""
    return MEASURED.findall(re.sub(r"`[^`\n]*`", "", prose(text)))


def test_the_measured_figure_rule():
    assert measured_figures("ran at 4.5 pairs/s, 3.53 ms, peaks at 4.76 GB, 69.3 dB; 850 tests") == [
        "4.5 pairs/s", "3.53 ms", "4.76 GB", "69.3 dB", "850 tests"]
    assert measured_figures("took 12.5 minutes, 2-3 s, 0.65-0.68 ms") == ["12.5 minutes", "2-3 s", "0.65-0.68 ms"]
    facts = ("batch 16, 512x128, a 260 MB file, TensorRT 10.3, the 2 s timeout `--duration 3`, sm87, 1e-6,"
             " 4 lights, Orin Nano 8GB, 16s that are not the batch, [x](../RESULTS.md#tao-730s-own)")
    assert measured_figures(facts + "\n```\n$ x\n3591.52 pairs/s\n```\n") == ["2 s"]


@pytest.mark.parametrize("page", PAGES)
def test_measured_figures_live_in_results(page):
    assert not measured_figures(TEXTS[page]), "{}: link benchmarks/RESULTS.md instead".format(page)


@functools.lru_cache(maxsize=None)
def cli_commands():
    """{command name: its argparse subparser} of ``changenet-trt`` (made once)."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_the_commands_page_lists_every_command():
    table = re.findall(r"^\| `([a-z0-9-]+)` \|", TEXTS["docs/commands.md"], re.MULTILINE)
    assert sorted(table) == sorted(cli_commands()), "docs/commands.md's table vs changenet-trt --help"


def command_lines():
    """(page, command, options) of every ``changenet-trt COMMAND ...`` line in a code block."""
    result = []
    for page, text in TEXTS.items():
        for block in FENCE.findall(text):
            for line in block.splitlines():
                match = re.search(r"changenet-trt(?: -v+)? ([a-z0-9-]+)(.*)", line.split("  #")[0])
                if match:
                    result.append((page, match.group(1), re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", match.group(2))))
    return result


@pytest.mark.parametrize("page,command,options", command_lines(), ids=page_id)
def test_shown_commands_take_their_options(page, command, options):
    """Every command a page shows exists and takes the options the line gives it."""
    commands = dict(cli_commands())
    assert command in commands, "{}: no command {!r}".format(page, command)
    known = commands[command]._option_string_actions
    assert not [o for o in options if o not in known], "{}: {} options".format(page, command)


def target_rows():
    """[(TensorRT cell, precision path cell)] of the README's target table."""
    start = README.index("| target | TensorRT |")
    rows = []
    for line in README[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append((cells[1], cells[3]))
    return rows


def precision_path_named(cell):
    """The ``PrecisionPath`` a table cell names: the one whose value's headline (its words before
    the first ``:``, ``;`` or ``(``) is the longest that starts the cell; None when none does."""
    headlines = {path: re.split(r"[:;(]", path.value)[0].strip() for path in PrecisionPath}
    named = [path for path, words in headlines.items() if cell.startswith(words)]
    return max(named, key=lambda path: len(headlines[path]), default=None)


def test_precision_path_named_tells_the_paths_apart():
    assert precision_path_named("strongly typed build of the typed model (x)") is PrecisionPath.TYPED_MODEL
    assert precision_path_named("strongly typed: precision from the ONNX graph only") is PrecisionPath.STRONGLY_TYPED
    assert precision_path_named("builder flags derived from the typed graph") is PrecisionPath.DERIVED_FLAGS
    assert precision_path_named("runs the float16 model as it is") is None


def test_the_target_tables_precision_paths_are_the_releases():
    """Each TensorRT row of the README's table names the precision path its release takes
    (``PrecisionPath.of``, what the build plan and doctor decide by)."""
    rows = [(trt, cell) for trt, cell in target_rows() if trt[:1].isdigit()]
    assert len(rows) >= 7, rows
    for trt, cell in rows:
        version = re.match(r"\d+\.(?:\d+|x)(?:\.\d+)?", trt).group(0).replace("x", "0")
        assert precision_path_named(cell) is PrecisionPath.of(version), "TensorRT {}: {!r}".format(trt, cell)


def package_tree():
    """{group: [module stems]}: group "" holds the top-level modules, else a subpackage's name
    (``__init__`` and ``__main__`` left out; a package inside a subpackage counts as one module)."""
    tree = {"": []}
    for name in sorted(os.listdir(PACKAGE_DIR)):
        path = os.path.join(PACKAGE_DIR, name)
        if name.endswith(".py") and name != "__init__.py":
            tree[""].append(name[:-3])
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            tree[name] = sorted(n[:-3] if n.endswith(".py") else n for n in os.listdir(path) if not n.startswith("__")
                                and (n.endswith(".py") or os.path.isfile(os.path.join(path, n, "__init__.py"))))
    return tree


def layout_list():
    """{group: [backticked words of its line]} from docs/design.md's layout list."""
    text = TEXTS["docs/design.md"]
    start = text.index("Layout: `changenet_trt/`")
    end = text.find("\n## ", start)
    section = text[start:end if end >= 0 else len(text)]
    layout = {}
    for line in re.split(r"\n- ", section)[1:]:
        head, _, body = line.partition(":")
        words = re.findall(r"`([^`]+)`", body.split("\n\n")[0])
        group = "" if head.strip() == "top level" else head.strip().strip("`").rstrip("/")
        assert group not in layout, "{} listed twice".format(head)
        layout[group] = words
    return layout, section


def test_layout_list_matches_the_package_tree():
    layout, section = layout_list()
    tree = package_tree()
    assert sorted(layout) == sorted(tree), "docs/design.md layout groups vs package"
    for group, words in layout.items():
        prefix = "changenet_trt." + (group + "." if group else "")
        modules = [w for w in words if w in tree[group]]
        assert sorted(modules) == tree[group], "docs/design.md layout of {!r} vs its modules".format(group or "top level")
        current = None
        for word in words:  # any other word is a name defined by the module listed before it
            if word in tree[group]:
                current = importlib.import_module(prefix + word)
            else:
                assert current is not None and hasattr(current, word), "{}: {!r}".format(group, word)
    for folder in re.findall(r"`([a-z_]+)/`", section.split("and next to it")[1]):
        assert os.path.isdir(os.path.join(ROOT, folder)), folder


#: distribution name -> the module it provides, where the two differ
IMPORT_NAMES = {"opencv-python-headless": "cv2"}


def test_every_required_dependency_is_imported_by_the_package():
    with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as handle:
        text = handle.read()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.MULTILINE | re.DOTALL).group(1)
    required = [re.match(r"[A-Za-z0-9_.-]+", d).group(0) for d in re.findall(r'"([^"]+)"', block)]
    assert "numpy" in required
    imported = set()
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as handle:
                    tree = ast.parse(handle.read())
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        imported |= {a.name.split(".")[0] for a in node.names}
                    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                        imported.add(node.module.split(".")[0])
    unused = [d for d in required if IMPORT_NAMES.get(d, d.replace("-", "_")) not in imported]
    assert not unused, "declared but never imported (move to an extra): {}".format(unused)
