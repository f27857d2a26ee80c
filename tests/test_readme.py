"""Every command in README.md works when pasted into a shell after ``make setup``.

The README's ```bash / ```sh blocks are split into commands (continuation lines joined, comments
dropped) and each command is either run or parse-checked:

* **run** (the allow-list, :func:`is_run`): every ``--help``, every ``--dry-run``, and the data
  preparation tools (``files_to_jsonl.py``, ``train_tokenizer.py``, ``preprocess_data.py``), in README
  order (a command shown twice runs once), in a scratch copy of the repository root (its entries linked, so outputs land in the scratch
  directory) with ``.venv/bin`` first on PATH. The README's corpus is this repository's own docs,
  so the data steps are small.
* **parse-checked**, everything else (long training and fine-tuning runs, ``make demo``): the
  program and script exist, and every ``--flag`` the command uses is one the script's ``--help``
  lists (exact names: argparse would also take abbreviations).
"""

import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
VENV_BIN = Path(sys.executable).parent
DATA_TOOLS = ("tools/files_to_jsonl.py", "tools/train_tokenizer.py", "tools/preprocess_data.py")
ACTIVATE = "source .venv/bin/activate"
PASSES_ON = {"tools/compare_routers.py": "pretrain_gpt_moe.py"}
"""Scripts that hand the flags they do not know to another script (its flags are theirs too)."""


def shell_blocks(text: str) -> list:
    """The bodies of the ```bash / ```sh blocks, in order."""
    return re.findall(r"^```(?:bash|sh)[ \t]*\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> list:
    """The block's commands: continuation lines joined; comment lines and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        if shlex.split(line, comments=True):
            out.append(line.strip())
    return out


def readme_commands() -> list:
    return [command for block in shell_blocks(README.read_text()) for command in commands(block)]


def words(command: str) -> list:
    """The command's words without leading environment assignments (``WORLD_SIZE=8 python ...``)."""
    tokens = shlex.split(command, comments=True)
    while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):
        tokens.pop(0)
    return tokens


def script_of(command: str):
    """``tools/x.py`` for ``python tools/x.py ...``; None for other programs."""
    tokens = words(command)
    return tokens[1] if len(tokens) > 1 and tokens[0] == "python" else None


def flags_of(command: str) -> set:
    return {token.split("=", 1)[0] for token in words(command) if token.startswith("--")}


def is_run(command: str) -> bool:
    """The allow-list of commands that run (the others are parse-checked)."""
    flags = flags_of(command)
    return "--help" in flags or "--dry-run" in flags or script_of(command) in DATA_TOOLS


def listed_flags(help_text: str) -> set:
    """The option strings of an argparse ``--help``: the invocation column of lines indented by two."""
    found = set()
    for line in help_text.splitlines():
        if line.startswith("  -") or line.startswith("  --"):
            invocation = re.split(r"\s{2,}", line.strip())[0]
            found.update(re.findall(r"--[A-Za-z0-9][A-Za-z0-9_-]*", invocation))
    return found


def help_text(script: str) -> str:
    """``python SCRIPT --help``, run in this process (megatron-core is then imported once for all
    scripts instead of once per script)."""
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [script, "--help"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            runpy.run_path(str(REPO / script), run_name="__main__")
    except SystemExit as exit_:
        assert exit_.code in (0, None), f"{script} --help exited {exit_.code}"
    finally:
        sys.argv = argv
    return out.getvalue()


# ----------------------------------------------------------------------------------- the README itself
def test_the_readme_says_to_activate_the_venv_after_make_setup():
    text = README.read_text()
    setup, activate = text.find("make setup"), text.find(ACTIVATE)
    assert 0 <= setup < activate, "README: `source .venv/bin/activate` must follow `make setup`"
    assert activate < text.find("python "), "README: activate the venv before the first python command"


def test_every_shell_command_is_classified():
    known = {"python", "make", "source", "bash"}
    for command in readme_commands():
        assert not re.search(r"<[^>]*>|\.\.\.", command.split("#")[0]), f"README command with a placeholder: {command}"
        program = words(command)[0]
        assert program in known, f"README command with an unknown program (teach test_readme.py): {command}"


def test_commands_parse():
    """Scripts and make targets exist; every flag is one the script's --help lists."""
    makefile = (REPO / "Makefile").read_text()
    helps = {}
    problems = []
    for command in readme_commands():
        tokens = words(command)
        if tokens[0] == "make":
            problems += [f"no make target {t!r}: {command}" for t in tokens[1:]
                         if not re.search(rf"^{re.escape(t)}:", makefile, flags=re.M)]
        elif tokens[0] == "source":
            assert tokens[1] == ".venv/bin/activate", command
        elif tokens[0] == "bash":
            problems += [] if (REPO / tokens[1]).is_file() else [f"no script {tokens[1]}: {command}"]
        else:
            script = script_of(command)
            if not (REPO / script).is_file():
                problems.append(f"no script {script}: {command}")
                continue
            for name in (script, PASSES_ON.get(script)):
                if name and name not in helps:
                    helps[name] = listed_flags(help_text(name))
                    assert "--help" in helps[name], f"{name} --help lists no options"
            accepted = helps[script] | helps.get(PASSES_ON.get(script), set())
            unknown = sorted(flags_of(command) - accepted)
            problems += [f"{script} has no flag {flag}" for flag in unknown]
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------ running the short ones
@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory):
    """A stand-in for the repository root: its tracked top-level entries and .venv linked in, so the
    commands see the scripts where the README says and write their outputs here."""
    root = tmp_path_factory.mktemp("readme")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in sorted({line.split("/", 1)[0] for line in tracked.splitlines()} | {".venv"}):
        if (REPO / name).exists():
            (root / name).symlink_to(REPO / name)
    return root


def test_the_short_commands_run(scratch_root):
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)
    ran = []
    done = set()
    for command in readme_commands():
        if not is_run(command) or command in done:  # a command shown twice (the BERT tokenizer) runs once
            continue
        done.add(command)
        result = subprocess.run(["bash", "-c", command], cwd=scratch_root, env=env, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, f"README command failed ({result.returncode}): {command}\n{result.stderr[-3000:]}"
        if "--help" in flags_of(command):
            assert result.stdout.startswith("usage:"), command
        ran.append(script_of(command))
    # What the allow-list must find: the whole data pipeline, a help and a dry run.
    for script in DATA_TOOLS:
        assert script in ran, f"README runs no {script}"
    assert any("--dry-run" in flags_of(c) for c in readme_commands()), "README shows no --dry-run"
    assert (scratch_root / "data" / "corpus_text_document.idx").is_file()
