"""README.md runs as written: every code block is run here, in document order, in a scratch
folder (beside a ``shared/datasets`` link to the BEIR datasets, so ``../shared/datasets``
means what it means in a checkout), against a real ``genseek serve`` on 127.0.0.1.

A block is run unless an HTML comment on the line before it says otherwise:

- ``<!-- readme-test: skip REASON -->``: not run, for the reason given (an Elasticsearch
  server, a Docker engine, the install that .ci/run itself performs);
- ``<!-- readme-test: background URL -->``: started in the background (a server), ready
  once URL answers 200, stopped by its PID when the module ends;
- ``<!-- readme-test: synopsis -->``: a usage synopsis with optional parts; every ``--option``
  it names must be accepted by that command's parser.

``bash``/``sh`` blocks run in bash with ``set -euo pipefail``; ``console`` blocks run each
``$ `` line, and every output line shown under it must appear in what the command printed
(``...`` stands for any one word, or for the rest of the line at its end; decimal numbers
match within 0.002; lines with a progress bar glyph are terminal-only and not checked);
``python`` blocks run in a fresh interpreter. The one substitution made: the port 8080 of
the HTTP examples becomes a free port.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
RUN_TIMEOUT_S = 1800

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    mode: str  # "run" | "skip" | "background" | "synopsis"
    note: str

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang or 'text'}"


def blocks(text: str) -> list[Block]:
    out: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        mode, note = "run", ""
        if i > 0 and (m := re.match(r"^<!-- readme-test: (\w+) ?(.*?) ?-->$", lines[i - 1])):
            mode, note = m.group(1), m.group(2)
        out.append(Block(i + 1, fence.group(1), "\n".join(lines[i + 1:end]), mode, note))
        i = end + 1
    return out


BLOCKS = blocks(README.read_text(encoding="utf-8"))


def test_every_block_is_run_or_says_why_not():
    """No block is silently left out: a block that is not run names its reason."""
    assert BLOCKS, "README.md has no code blocks"
    for b in BLOCKS:
        assert b.mode in {"run", "skip", "background", "synopsis"}, b.id
        if b.mode == "skip":
            assert len(b.note) > 10, f"{b.id}: a skipped block must say why"
        if b.mode == "run":
            assert b.lang in {"bash", "sh", "console", "python"}, \
                f"{b.id}: a ```{b.lang} block cannot be run; mark it skip with a reason"


# -- the scratch folder and the servers --------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scratch:
    def __init__(self, root: Path, datasets: Path):
        self.root = root
        self.cwd = root / "work"
        self.cwd.mkdir(parents=True)
        (root / "shared").mkdir()
        (root / "shared" / "datasets").symlink_to(datasets.resolve())
        self.port = _free_port()
        self.servers: list[subprocess.Popen] = []
        bin_dir = str(Path(sys.executable).parent)
        self.env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                        GENSEEK_CACHE=str(root / "cache"), TOKENIZERS_PARALLELISM="false",
                        GENSEEK_DATASETS=str(root / "shared" / "datasets"))
        # the example corpus the index-spec example names
        from _synth import make_docs, write_jsonl

        write_jsonl(self.cwd / "corpus.jsonl", make_docs(40, seed=11))

    def text(self, block: Block) -> str:
        return block.text.replace("8080", str(self.port))

    def stop(self) -> None:
        for proc in self.servers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)  # the group of the shell we started
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory, datasets_root):
    s = Scratch(tmp_path_factory.mktemp("readme"), datasets_root)
    yield s
    s.stop()


# -- running one block ------------------------------------------------------------------------


def _decimal(token: str) -> float | None:
    return float(token) if re.fullmatch(r"-?\d+\.\d+", token) else None


def line_matches(expected: str, actual: str) -> bool:
    want, have = expected.split(), actual.split()
    i = 0
    for j, token in enumerate(want):
        if token == "...":
            if j == len(want) - 1:
                return i <= len(have)
            i += 1
            continue
        if i >= len(have):
            return False
        a, b = _decimal(token), _decimal(have[i])
        if a is not None and b is not None:
            if abs(a - b) > 0.002:
                return False
        elif token != have[i]:
            return False
        i += 1
    return i == len(have)


def _run(scratch: Scratch, argv: list[str], what: str) -> str:
    done = subprocess.run(argv, cwd=scratch.cwd, env=scratch.env, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{what} exited {done.returncode}:\n{output[-4000:]}"
    return output


def run_console(scratch: Scratch, block: Block) -> None:
    commands: list[tuple[str, list[str]]] = []
    for line in scratch.text(block).splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands and line.strip():
            commands[-1][1].append(line)
    assert commands, f"{block.id}: a console block without a $ command"
    for command, expected in commands:
        output = _run(scratch, ["bash", "-c", command], f"{block.id}: $ {command}")
        lines = output.splitlines()
        for want in expected:
            if "█" in want:  # a progress bar: drawn on a terminal only
                continue
            assert any(line_matches(want, have) for have in lines), (
                f"{block.id}: $ {command}: README shows\n  {want}\nbut it printed:\n{output}")


def run_background(scratch: Scratch, block: Block) -> None:
    url = block.note.replace("8080", str(scratch.port))
    proc = subprocess.Popen(["bash", "-c", scratch.text(block)], cwd=scratch.cwd,
                            env=scratch.env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    scratch.servers.append(proc)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{block.id}: the server exited {proc.returncode}: "
                        f"{proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{block.id}: {url} did not answer within 300 s")


def run_synopsis(block: Block) -> None:

    text = block.text.replace("\\\n", " ")
    words = shlex.split(text.replace("[", " ").replace("]", " "))
    assert words[0] == "genseek"
    subcommand = [w for w in words[1:3] if not w.startswith("-")]
    options = sorted({w.split("=")[0] for w in words if w.startswith("--")})
    helped = subprocess.run([sys.executable, "-m", "genseek.cli", *subcommand, "--help"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert helped.returncode == 0, helped.stderr
    for option in options:
        assert re.search(rf"(^|[\s,\[]){re.escape(option)}\b", helped.stdout), (
            f"{block.id}: genseek {' '.join(subcommand)} has no option {option}")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_block(block: Block, scratch: Scratch):
    if block.mode == "skip":
        pytest.skip(block.note)
    if block.mode == "synopsis":
        run_synopsis(block)
    elif block.mode == "background":
        run_background(scratch, block)
    elif block.lang in {"bash", "sh"}:
        _run(scratch, ["bash", "-euo", "pipefail", "-c", scratch.text(block)], block.id)
    elif block.lang == "console":
        run_console(scratch, block)
    elif block.lang == "python":
        source = scratch.text(block)
        _run(scratch, [sys.executable, "-c", source], block.id)
        _run(scratch, [sys.executable, "-c", source], f"{block.id} (run again)")
    else:  # pragma: no cover - test_every_block_is_run_or_says_why_not refuses it
        pytest.fail(f"{block.id}: cannot run a ```{block.lang} block")
