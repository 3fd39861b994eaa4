"""The documentation runs: every ```python block, every printed sample, every relative link.

* Every ```python block of README.md and docs/*.md runs on its own, in a fresh namespace, with a
  temporary directory as the working directory (blocks may write files such as checkpoints).
* Every printed sample is produced again and compared, so none can go stale. Three kinds:

  - a ```console block: each ``$ `` line is a command (``python -m jaxbp ...`` or ``jaxbp ...``;
    ``python`` and ``jaxbp`` are the venv's, as after ``source .venv/bin/activate``), run by bash
    in a temporary directory; the lines up to the next ``$ `` are its standard output (add
    ``2>&1`` to the command to show its standard error too);
  - a ```text output block: the standard output of the nearest ```python block above it;
  - a session (a ```text or ```pycon block starting with ``>>> ``): each example runs in one
    namespace, as in the interpreter, and its printout is compared.

  The code behind an output block or a session runs in a fresh interpreter, as a user's would
  (not in the test process, whose settings -- x64 on -- would change what it prints).

  The comparison (:func:`same_output`) normalises what differs from run to run and nothing else:
  ``...`` stands for any text (a line of only ``...`` for any number of lines, none included);
  runs of spaces match runs of spaces (column widths); a number followed by ``s`` or `` s``
  (seconds) and the value of a JSON key containing ``second`` match any number; other numbers
  match to 1e-3 relative or two units of the sample's last digit, integers exactly, and
  values both below 1e-6 in magnitude (float32 or float64 rounding noise) match each other;
  the temporary directory's path is shown as ``$TMP``.

  ``JAXBP_UPDATE_SAMPLES=1 .venv/bin/python -m pytest tests/test_docs.py -k sample`` rewrites the
  samples that differ with what the code prints now (keeping a whole-line ``...`` and the lines
  around it), for a change that means to change an output; review the diff.

README's blocks and samples are in the fast tier; the docs pages' in the slow tier (each takes a
few seconds of compilation). Links: every relative link and image must name an existing file; a
``#anchor`` into a Markdown file must name one of its headings (GitHub's slug rule).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
NUMBER = r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|(?<![A-Za-z])(?:nan|inf)(?![A-Za-z])"
COMMANDS = re.compile(r"^(?:python -m jaxbp|jaxbp)(?:\s|$)")  # what a console sample may run
UPDATE = os.environ.get("JAXBP_UPDATE_SAMPLES") == "1"


class Block(NamedTuple):
    """A fenced block: its info string, its text and where the text lies in the page."""

    info: str
    text: str
    start: int
    end: int

    @property
    def kind(self) -> str:
        words = self.info.split()
        first = words[0] if words else ""
        if first == "python":
            return "python"
        if first == "console":
            return "console"
        if first == "text" and words[1:2] == ["output"]:
            return "output"
        if first in ("text", "pycon") and self.text.startswith(">>> "):
            return "session"
        return "other"


def fenced(page: Path) -> list[Block]:
    text = page.read_text()
    return [Block(m.group(1).strip(), m.group(2), m.start(2), m.end(2)) for m in FENCE.finditer(text)]


def blocks(page: Path) -> list[str]:
    return [b.text for b in fenced(page) if b.kind == "python"]


def samples(page: Path) -> list[int]:
    """Indices (into :func:`fenced`) of the page's printed samples."""
    return [i for i, b in enumerate(fenced(page)) if b.kind in ("console", "output", "session")]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {slug(h) for h in re.findall(r"^#{1,6}\s+(.*)$", text, re.M)}


def _tier(page: Path):
    return () if page.name == "README.md" else pytest.mark.slow


CASES = [
    pytest.param(page, i, id=f"{page.relative_to(ROOT)}-{i}", marks=_tier(page))
    for page in PAGES
    for i in range(len(blocks(page)))
]
SAMPLES = [
    pytest.param(page, i, id=f"{page.relative_to(ROOT)}-sample-{i}", marks=_tier(page))
    for page in PAGES
    for i in samples(page)
]


# --- comparing a sample with what the code prints ---


def _pattern(expected: str) -> tuple[re.Pattern, list[str | None]]:
    """A regex for ``expected`` and, per number group, the sample's text (None: any number)."""
    parts, numbers = [], []
    lines = expected.split("\n")
    for n, line in enumerate(lines):
        end = "" if n == len(lines) - 1 else "\n"
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?" if end else r"(?:[^\n]*(?:\n|$))*?")
            continue
        for m in re.finditer(rf"(?P<ell>\.\.\.)|(?P<num>{NUMBER})|(?P<ws>[ \t]+)|(?P<other>.)", line):
            if m.group("ell"):
                parts.append(r"[^\n]*?")
            elif m.group("num"):
                timing = re.match(r" ?s\b", line[m.end() :]) or re.search(
                    r'"[^"]*second[^"]*":\s*$', line[: m.start()]
                )
                numbers.append(None if timing else m.group("num"))
                parts.append(f"({NUMBER})")
            elif m.group("ws"):
                parts.append(r"[ \t]+")
            else:
                parts.append(re.escape(m.group("other")))
        parts.append(re.escape(end))
    return re.compile("".join(parts)), numbers


def _close(sample: str | None, got: str) -> bool:
    if sample is None:
        return True
    e, a = float(sample), float(got)
    if math.isnan(e) or math.isnan(a) or math.isinf(e) or math.isinf(a):
        return sample == got
    if re.fullmatch(r"[-+]?\d+", sample):
        return e == a
    if abs(e) <= 1e-6 and abs(a) <= 1e-6:  # rounding noise
        return True
    mantissa, _, exponent = sample.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    unit = 10.0 ** (int(exponent or 0) - decimals)
    return abs(a - e) <= max(1e-3 * abs(e), 2 * unit)


def same_output(expected: str, actual: str) -> bool:
    """Whether ``actual`` shows what the sample ``expected`` shows (see the module docstring)."""
    pattern, numbers = _pattern(expected.strip("\n"))
    m = pattern.fullmatch(actual.strip("\n"))
    return bool(m) and all(_close(s, g) for s, g in zip(numbers, m.groups(), strict=True))


def _clean(text: str, tmp: Path) -> str:
    text = text.replace(str(tmp), "$TMP")
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n"))


def _regenerated(expected: str, actual: str) -> str | None:
    """``actual`` cut as ``expected`` is (the lines around its whole-line ``...``), or None when the
    sample elides inside a line (rewrite that one by hand)."""
    lines, got = expected.strip("\n").split("\n"), actual.split("\n")
    if any("..." in line for line in lines if line != "..."):
        return None
    if "..." not in lines:
        return actual
    k = lines.index("...")
    tail = len(lines) - k - 1
    return "\n".join([*got[:k], "...", *(got[len(got) - tail :] if tail else [])])


# --- producing a sample's output ---


def _run_commands(block: Block, tmp: Path) -> list[tuple[str, str, str, str]]:
    """``($ command, expected, stdout, stdout and stderr)`` for each ``$ `` line of a console block."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("COLUMNS", None)
    out, command, expected = [], None, []
    for line in [*block.text.rstrip("\n").split("\n"), "$ "]:
        if not line.startswith("$ "):
            expected.append(line)
            continue
        if command is not None:
            assert COMMANDS.match(command), f"a console sample runs python -m jaxbp or jaxbp, not {command!r}"
            done = subprocess.run(["bash", "-c", command], cwd=tmp, env=env, capture_output=True, text=True)
            stdout = _clean(done.stdout, tmp)
            shown = f"{stdout}\n(exit code {done.returncode}; stderr:)\n{done.stderr}"
            out.append((f"$ {command}", "\n".join(expected), stdout, shown))
        command, expected = line[2:].strip(), []
    return out


SESSION = """
import json, sys
namespace = {"__name__": "__main__"}
for source in json.load(sys.stdin):
    exec(compile(source + "\\n", "<session>", "single"), namespace)
    print(SEPARATOR, flush=True)
"""
SEPARATOR = "--- jaxbp docs session: end of example ---"


def _python(code: str, tmp: Path, stdin: str | None = None) -> str:
    """What ``python -c code`` prints, in a fresh interpreter (as a user runs it: no test settings)."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp, input=stdin, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"the code behind a sample failed:\n{done.stderr}"
    return done.stdout


def _session_output(block: Block, tmp: Path) -> list[tuple[str, str, str]]:
    """``(source, expected, actual)`` per example of a ``>>>`` session, run in one namespace."""
    examples, source, want = [], [], []
    for line in [*block.text.rstrip("\n").split("\n"), ">>> "]:
        if line.startswith(">>> "):
            if source:
                examples.append(("\n".join(source), "\n".join(want)))
            source, want = [line[4:]], []
        elif line.startswith("... ") and not want:
            source.append(line[4:])
        else:
            want.append(line)
    driver = SESSION.replace("SEPARATOR", repr(SEPARATOR))
    printed = _python(driver, tmp, stdin=json.dumps([s for s, _ in examples])).split(SEPARATOR + "\n")
    return [(s, e, _clean(p, tmp)) for (s, e), p in zip(examples, printed, strict=False)]


def _producer(page: Path, index: int) -> str:
    """The code of the ```python block nearest above block ``index``."""
    above = [b for b in fenced(page)[:index] if b.kind == "python"]
    assert above, f"{page.name}: a text output block needs a python block above it"
    return above[-1].text


def test_readme_and_docs_have_examples():
    assert blocks(ROOT / "README.md"), "README has python examples"
    assert samples(ROOT / "README.md"), "README shows a printed sample"
    assert len(PAGES) > 1, "docs/*.md exist"


@pytest.mark.parametrize(("page", "i"), CASES)
def test_python_block_runs(page, i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = compile(blocks(page)[i], f"{page.relative_to(ROOT)} (python block {i})", "exec")
    module = types.ModuleType("__docs__")  # a real module: dataclasses resolve string annotations there
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(code, module.__dict__)


@pytest.mark.parametrize(("page", "i"), SAMPLES)
def test_printed_sample_is_what_the_code_prints(page, i, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    block = fenced(page)[i]
    if block.kind == "console":
        compared = _run_commands(block, tmp_path)
    elif block.kind == "output":
        actual = _clean(_python(_producer(page, i), tmp_path), tmp_path)
        compared = [("the python block above", block.text, actual, actual)]
    else:
        compared = [(s, e, a, a) for s, e, a in _session_output(block, tmp_path)]
    stale = [(what, e, a, shown) for what, e, a, shown in compared if not same_output(e, a)]
    if stale and UPDATE:
        _rewrite(page, block, compared)
    assert not stale, "\n\n".join(
        f"{page.relative_to(ROOT)}: the sample of {what} is stale."
        f"\n--- the page shows:\n{e}\n--- it prints:\n{shown}"
        for what, e, _, shown in stale
    )


def _rewrite(page: Path, block: Block, compared: list) -> None:
    """Put what the code prints now into the page (JAXBP_UPDATE_SAMPLES=1)."""
    new_parts = []
    for what, expected, actual, _ in compared:
        new = expected if same_output(expected, actual) else _regenerated(expected, actual)
        if new is None:
            return
        if block.kind == "console":
            new_parts += [what, new] if new else [what]
        elif block.kind == "session":
            src = what.split("\n")
            new_parts += [">>> " + src[0], *("... " + s for s in src[1:])] + ([new] if new else [])
        else:
            new_parts.append(new)
    text = page.read_text()
    page.write_text(text[: block.start] + "\n".join(new_parts) + "\n" + text[block.end :])


def test_same_output_normalises_only_what_varies():
    sample = 'epoch   1/3  train loss 0.6750  test acc 0.9560  1.0s\n...\n{"seconds": 2.5, "epochs": 3}'
    run = 'epoch   1/3  train loss 0.6751  test acc 0.9560  13.2s\nx\ny\n{"seconds": 9.0, "epochs": 3}'
    assert same_output(sample, run)
    assert not same_output(sample, run.replace("0.6751", "0.6760"))  # beyond 2 units of the last digit
    assert not same_output(sample, run.replace('"epochs": 3', '"epochs": 4'))  # integers exactly
    assert not same_output(sample, run.replace("train loss", "test loss"))
    assert same_output("a\n...\nb", "a\nb") and same_output("x  1.19e-07  ok", "x 8.9e-08  ok")  # noise
    assert not same_output("0  x  4.80e-01  (1, 6)", "0  x  6.34e-01  (3, 4)")  # checking.md's stale sample
    assert same_output("usage: jaxbp train [-h] ...", "usage: jaxbp train [-h] [--debug] [--dataset D]")
    assert _regenerated("a\n...\nz", "a\nb\nc\nz") == "a\n...\nz" and _regenerated("a ... z", "a b z") is None


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_resolve(page):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(
                f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})"
            )
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_slug_rule():
    assert slug("The training loop: scanned epoch against a Python loop") == (
        "the-training-loop-scanned-epoch-against-a-python-loop"
    )
    assert slug("Checking a `jax.grad` backward") == "checking-a-jaxgrad-backward"
