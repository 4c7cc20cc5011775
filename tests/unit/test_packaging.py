"""The Lambda layer ships what the package needs at runtime, and the CLI's subcommands all load."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from pqlflow.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
NOT_IN_LAYER = {"boto3", "msgspec"}  # boto3: the Lambda runtime has it; msgspec: only backtest uses it


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[ ]", r.strip(), maxsplit=1)[0].lower() for r in requirements if r.strip()}


def test_layer_requirements_match_the_package_runtime_dependencies():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lines = [line for line in (ROOT / "layers/pqlflow/requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert _names(lines) == _names(project) - NOT_IN_LAYER


def test_every_documented_command_is_available():
    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    for name in ["definition", "policy", "backtest", "sample", "email", "quarantine"]:
        assert name in commands


def test_parquet_reading_is_an_extra_that_dev_installs_and_the_layer_does_not():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    layer = (ROOT / "layers/pqlflow/requirements.txt").read_text().splitlines()
    assert _names(extras["parquet"]) == {"duckdb"}
    assert _names(extras["parquet"]) <= _names(extras["dev"])  # `make setup` installs it
    assert not _names(extras["parquet"]) & _names(layer)


def test_the_cli_runs_as_a_module_with_the_interpreter_it_is_given():
    # bench scripts run `python -m pqlflow.cli` with their own interpreter (no console script on PATH needed)
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pqlflow.cli", "sample", "--accounts", "2", "--days", "3"],  # noqa: S603
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('"messageId"') > 0


def test_the_cli_stops_quietly_when_its_reader_goes_away():
    # `pqlflow definition validate ... | head -1`: the pipe closes after one line, far more is still to come
    import subprocess
    import sys

    examples = sorted(str(p) for p in (Path(__file__).resolve().parents[2] / "examples" / "definitions").glob("*.yaml"))
    command = [sys.executable, "-m", "pqlflow.cli", "definition", "validate", *examples * 300]  # ~250 KB of lines
    producer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # noqa: S603
    assert producer.stdout is not None
    producer.stdout.readline()
    producer.stdout.close()
    _, err = producer.communicate(timeout=120)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err
    assert producer.returncode == 141
