"""Every ``python`` command in the READMEs' code blocks runs as written, in the form that needs no real data: the
modality CLIs resolve their whole configuration (``--print_config``, which reads every ``--config`` file and checks
every argument), the other tools answer ``--help``.  Running them for real is the job of the demo, launcher and
export tests; this catches a renamed config, option or module the moment a README goes stale.

The README's two set-up commands are run by ``.ci/run`` itself, and ``python -m demo`` by ``tests/test_demo.py``.
"""
from __future__ import annotations

import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

from pathway.cli import run_cli
from test_modality_contract import ENTRY_POINTS, _cli_classes

REPO = Path(__file__).resolve().parents[1]
READMES = [REPO / "README.md", *sorted(REPO.glob("*/README.md")), *sorted(REPO.glob("scripts/*/README.md"))]
PYTHON = re.compile(r"^(?:\.venv/bin/)?python3? ")


def _commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of each python command in a fenced block (continuation lines joined, comments dropped)."""
    found = []
    for readme in READMES:
        in_block, pending = False, ""
        for number, line in enumerate(readme.read_text().splitlines(), 1):
            if line.startswith("```"):
                in_block = not in_block
                continue
            if not in_block:
                continue
            line = pending + line.strip()
            if line.endswith("\\"):
                pending = line[:-1] + " "
                continue
            pending = ""
            if PYTHON.match(line) and "&&" not in line:
                argv = shlex.split(line, comments=True)[1:]
                found.append((f"{readme.relative_to(REPO)}:{number}", argv))
    return found


COMMANDS = _commands()


def test_readmes_show_commands_of_every_entry_point() -> None:
    shown = {argv[1] for _, argv in COMMANDS if argv[0] == "-m"}
    assert set(ENTRY_POINTS) | {"pathway", "demo.data", "Audio.stats"} <= shown, shown


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_readme_command_runs(where: str, argv: list[str], capsys: pytest.CaptureFixture,
                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(REPO)
    if argv[0] == "-m" and argv[1] in ENTRY_POINTS:
        model_class, data_class = _cli_classes(argv[1])
        args = [a for a in argv[2:] if a != "--print_config"] + ["--print_config"]
        monitor = "val/ins_miou" if argv[1] == "Point.seg" else "val/acc1"
        monkeypatch.setattr(sys, "argv", ["python", *argv])
        with pytest.raises(SystemExit) as exit_info:
            run_cli(model_class, data_class, args=args, monitor=monitor)
        assert exit_info.value.code in (0, None), f"{where}: {' '.join(argv)}\n{capsys.readouterr().err[-3000:]}"
        assert "model:" in capsys.readouterr().out
        return
    if argv[0] == "-m":
        run, name = runpy.run_module, argv[1]
    else:  # a script, e.g. benchmarks/pathway_overhead.py
        run, name = runpy.run_path, str(REPO / argv[0])
        monkeypatch.syspath_prepend(str((REPO / argv[0]).parent))
    monkeypatch.setattr(sys, "argv", [name, *(["export"] if argv[1:2] == ["export"] else []), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        run(name, run_name="__main__")
    assert exit_info.value.code in (0, None), f"{where}: {' '.join(argv)} --help failed"
    assert "usage" in capsys.readouterr().out.lower()
