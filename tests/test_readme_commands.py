"""Every ``python`` command in the READMEs' code blocks runs as written, in the form that needs no real data: the
modality CLIs resolve their whole configuration (``--print_config``, which reads every ``--config`` file and checks
every argument), the other tools answer ``--help``.  Running them for real is the job of the demo, launcher and
export tests; this catches a renamed config, option or module the moment a README goes stale.

The README's two set-up commands are run by ``.ci/run`` itself, and ``python -m demo`` by ``tests/test_demo.py``.
Also checked: every relative link of the READMEs reaches an existing file and heading (benchmark figures live in
benchmarks/README.md, linked by section), and README.md's table of configs names every shipped config.
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


def _outside_code(readme: Path) -> list[tuple[int, str]]:
    """``(line number, line)`` of a README outside its fenced code blocks."""
    lines, in_block = [], False
    for number, line in enumerate(readme.read_text().splitlines(), 1):
        if line.startswith("```"):
            in_block = not in_block
        elif not in_block:
            lines.append((number, line))
    return lines


def _anchors(readme: Path) -> set[str]:
    """GitHub's anchors of a README's headings: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for _, line in _outside_code(readme) if line.startswith("#")}


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_readme_links_point_at_files_and_headings_that_exist() -> None:
    """Benchmark figures live in benchmarks/README.md and the READMEs link to its sections: a renamed file or
    heading must fail here, not leave a newcomer at a dead link."""
    broken = []
    for readme in [*READMES, REPO / "benchmarks" / "README.md"]:
        for number, line in _outside_code(readme):
            for target in LINK.findall(line):
                if "://" in target or target.startswith("mailto:"):
                    continue
                path, _, anchor = target.partition("#")
                file = (readme.parent / path).resolve() if path else readme
                if not file.exists():
                    broken.append(f"{readme.relative_to(REPO)}:{number}: {target} (no such file)")
                elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                    broken.append(f"{readme.relative_to(REPO)}:{number}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_readme_config_table_lists_every_config() -> None:
    """README.md's table of configs (config, what it runs, hardware, time) names every shipped config."""
    table = {match for _, line in _outside_code(REPO / "README.md") if line.startswith("| `")
             for match in re.findall(r"^\| `([^`]+\.yaml)`", line)}
    shipped = {str(path.relative_to(REPO)) for path in REPO.glob("*/configs/*.yaml")}
    assert shipped, "no configs found"
    assert table == shipped, f"missing from README.md: {sorted(shipped - table)}; not shipped: {sorted(table - shipped)}"


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
