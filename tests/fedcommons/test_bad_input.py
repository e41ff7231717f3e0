"""Bad input to every command: one clear line, a documented exit code, nothing half-made.

Each class of bad input a careless or hostile user can give, with its own
input and message: no Python traceback, no secret in the output, read-only
commands leave the file tree as it was, and a failed command that creates
state can simply be run again with fixed arguments.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from typer.testing import CliRunner

from common.images import ImageData, write_npz
from common.keys import load_ed25519_key
from common.licences import SPDX
from fedcommons.cli import app
from fedcommons.errors import LOG_DIR_ENV, mask_secrets
from ledger import Ledger
from ledger.report import ledger_report
from tests.support.release_federation import Federation

runner = CliRunner()


def _run(*args: str) -> Result:
    return runner.invoke(app, list(args))


def _one_clean_line(result: Result, code: int = 1) -> str:
    """The error line of a refused command (and that it is all there is to it)."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), result.output
    return " ".join(" ".join(lines).split())


def _tree(root: Path) -> dict[str, tuple[bool, int]]:
    """Every path under ``root`` with whether it is a folder and its size."""
    return {
        str(p.relative_to(root)): (p.is_dir(), 0 if p.is_dir() else p.stat().st_size)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    data = ImageData(
        rng.random((30, 1, 8, 8)).astype(np.float32), np.arange(30, dtype=np.int64) % 10, "x"
    )
    path = tmp_path / "lab" / "digits.npz"
    write_npz(path, data)
    return path


@pytest.fixture
def operator(tmp_path: Path) -> Path:
    folder = tmp_path / "op"
    result = _run("operator", "init", str(folder), "--superlink", "127.0.0.1:9")
    assert result.exit_code == 0, result.output
    return folder


# -- tracebacks become one line ----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("foo://x", "unknown database 'foo'; give sqlite:///FILE or postgresql://"),
        ("mysql://u@h/db", "the driver for 'mysql' is not installed (MySQLdb)"),
        ("not a url", "invalid ledger URL '(an unparseable URL)'"),
    ],
)
def test_a_ledger_url_fedcommons_cannot_use_is_one_line(url: str, message: str) -> None:
    assert message in _one_clean_line(_run("audit", "show", "--ledger", url))


def test_a_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    fake = tmp_path / "ledger.db"
    fake.write_text("not a database, just text\n" * 100)
    line = _one_clean_line(_run("audit", "show", "--ledger", f"sqlite:///{fake}"))
    assert f"{fake} is not a ledger: not a SQLite database file" in line
    line = _one_clean_line(
        _run("operator", "release", "--run", "1", "--out", str(tmp_path / "r"),
             "--ledger", f"sqlite:///{fake}", "--snapshots", str(tmp_path),
             "--operator-key", str(tmp_path / "none.pem"))
    )  # fmt: skip
    assert "not a SQLite database file" in line or "none.pem" in line
    assert fake.read_text().startswith("not a database")  # untouched


def test_a_csv_field_longer_than_pythons_csv_limit_is_read(tmp_path: Path) -> None:
    """Over-long texts are truncated at tokenization, so reading them must not fail."""
    policy = tmp_path / "bert.toml"
    policy.write_text(
        '[model]\nname = "bert"\nnum-classes = 2\n'
        '[data]\ndataset = "stdlib-docs"\nlabels = "short,long"\n'
    )
    data = tmp_path / "texts.csv"
    data.write_text(f"text,label\nhello,short\n{'x' * 200_000},long\n")
    result = _run("client", "check-data", str(data), "--policy", str(policy), "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["examples"] == 2
    broken = tmp_path / "broken.csv"
    broken.write_text('text,label\n"never closed,long\n')
    line = _one_clean_line(_run("client", "check-data", str(broken), "--policy", str(policy)))
    assert "broken.csv" in line


def test_a_folder_where_a_history_file_belongs_is_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "privacy" / f"{'a' * 64}.json").mkdir(parents=True)
    line = _one_clean_line(_run("client", "budget", "--state", str(state)))
    assert f"{'a' * 64}.json is not a file" in line


def test_a_data_file_that_links_to_a_text_file_is_not_an_npz(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("these are notes, not images\n")
    link = tmp_path / "digits.npz"
    link.symlink_to(text)
    line = _one_clean_line(_run("client", "check-data", str(link)))
    assert "digits.npz: not an .npz file" in line
    assert "allow_pickle" not in line and "unsafe" not in line


def test_an_unknown_format_is_refused_not_ignored(tmp_path: Path) -> None:
    result = _run("client", "budget", "--state", str(tmp_path), "--format", "yaml")
    assert result.exit_code == 2
    assert "Invalid value for '--format'" in result.output and "yaml" in result.output


# -- read-only commands write nothing ---------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["audit", "show", "--ledger", "sqlite:///{root}/missing/deeper/ledger.db"],
        ["audit", "verify", "--ledger", "sqlite:///{root}/missing/ledger.db", "--skip-signatures"],
        ["audit", "verify", "--ledger", "sqlite:///{root}/l.db", "--receipts", "{root}/none",
         "--skip-signatures"],
        ["client", "budget", "--state", "{root}/missing/state"],
        ["client", "check-data", "{root}/missing/data.npz"],
        ["operator", "check-policy", "{root}/missing/policy.toml"],
    ],
)  # fmt: skip
def test_read_only_commands_never_create_anything(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "existing.txt").write_text("x")
    before = _tree(tmp_path)
    result = _run(*[part.format(root=tmp_path) for part in command])
    _one_clean_line(result)
    assert _tree(tmp_path) == before


# -- creating state is all or nothing ------------------------------------------------


def test_a_failed_init_can_be_run_again(tmp_path: Path) -> None:
    folder = tmp_path / "op"
    for bad in ("foo://x", "postgresql://nobody:pw@127.0.0.1:1/none"):
        line = _one_clean_line(_run("operator", "init", str(folder), "--ledger", bad))
        assert "pw@" not in line
        assert not folder.exists() and list(tmp_path.iterdir()) == []
    result = _run("operator", "init", str(folder))
    assert result.exit_code == 0, result.output


def test_a_failed_enrolment_leaves_no_keys_and_can_be_run_again(
    tmp_path: Path, operator: Path, data_file: Path
) -> None:
    state = tmp_path / "state"
    (state / "ca.pem").mkdir(parents=True)  # in the way of a file the enrolment writes
    command = [
        "client", "enroll", "--state", str(state), "--institution", "lab-a", "--kind",
        "academia", "--data", str(data_file), "--licence", "CC-BY-4.0",
        "--consortium", str(operator / "consortium.json"),
    ]  # fmt: skip
    line = _one_clean_line(_run(*command))
    assert "nothing was enrolled" in line and "ca.pem" in line
    assert not (state / "keys").exists()
    assert not any(p.name.startswith(".keys") for p in state.iterdir())
    (state / "ca.pem").rmdir()
    result = _run(*command)
    assert result.exit_code == 0, result.output
    assert (state / "keys" / "signing.pem").is_file()


def test_a_release_while_another_writer_holds_the_lock_writes_nothing(
    tmp_path: Path, operator: Path
) -> None:
    """A run to release, made by hand in the operator's own ledger, then a busy ledger."""
    ledger = Ledger(f"sqlite:///{operator / 'ledger.db'}")
    signer = load_ed25519_key(operator / "keys" / "operator-signing.pem")
    federation = Federation(ledger, signer, operator / "snapshots", {})
    federation.admit("lab-a", SPDX["CC-BY-4.0"])
    run_id = federation.run(["lab-a"])
    ledger.close()
    out = tmp_path / "release"
    connection = sqlite3.connect(operator / "ledger.db", timeout=0.1, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    try:
        line = _one_clean_line(
            _run("operator", "release", "--run", str(run_id), "--out", str(out), "--dir",
                 str(operator))
        )  # fmt: skip
    finally:
        connection.rollback()
        connection.close()
    assert "is busy: another process holds its write lock" in line
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".release")] == []
    result = _run("operator", "release", "--run", str(run_id), "--out", str(out), "--dir",
                  str(operator))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "model-card.json", "model-card.md", "model.safetensors",
    ]  # fmt: skip


def test_admit_says_what_was_recorded_when_the_superlink_is_down(
    tmp_path: Path, operator: Path, data_file: Path
) -> None:
    state = tmp_path / "state"
    enrolled = _run(
        "client", "enroll", "--state", str(state), "--institution", "lab-a", "--kind",
        "academia", "--data", str(data_file), "--licence", "CC-BY-4.0",
        "--consortium", str(operator / "consortium.json"),
    )  # fmt: skip
    assert enrolled.exit_code == 0, enrolled.output
    request = state / "enrolment-request.json"
    line = _one_clean_line(_run("operator", "admit", str(request), "--dir", str(operator)))
    assert "lab-a is admitted in the ledger, but its SuperNode key could not be registered" in line
    assert "run the same 'fedcommons operator admit' again" in line
    ledger = Ledger(f"sqlite:///{operator / 'ledger.db'}", migrate=False)
    with ledger.session() as s:
        assert [p["name"] for p in ledger_report(s)["participants"]] == ["lab-a"]
    ledger.close()


# -- secrets --------------------------------------------------------------------------


def test_a_password_in_a_ledger_url_is_never_shown(tmp_path: Path) -> None:
    url = "postgresql://fedcommons:s3cret-pw@127.0.0.1:1/ledger"
    for command in (
        ["audit", "show", "--ledger", url],
        ["audit", "verify", "--ledger", url, "--skip-signatures"],
        ["operator", "init", str(tmp_path / "op"), "--ledger", url],
    ):
        result = _run(*command)
        assert result.exit_code == 1 and "s3cret-pw" not in result.output, result.output
        assert "fedcommons:***@127.0.0.1:1" in result.output
    assert mask_secrets("at postgresql+psycopg://u:p%40ss@db:5432/x now") == (
        "at postgresql+psycopg://u:***@db:5432/x now"
    )


# -- the unexpected --------------------------------------------------------------------


def test_an_unexpected_error_is_one_line_and_a_log_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug (simulated here) shows no traceback: exit 70 and the file that holds it."""
    from common.policy import Policy

    def broken(path: object) -> object:
        raise ZeroDivisionError("postgresql://op:hunter2@db/x divided by zero")

    monkeypatch.setattr(Policy, "load", broken)
    monkeypatch.setenv(LOG_DIR_ENV, str(tmp_path / "logs"))
    line = _one_clean_line(_run("operator", "check-policy", "p.toml"), code=70)
    assert "unexpected ZeroDivisionError" in line and "hunter2" not in line
    (log,) = (tmp_path / "logs").iterdir()
    assert str(log) in line.replace(" ", "") or log.name in line
    text = log.read_text()
    assert "Traceback" in text and "ZeroDivisionError" in text and "hunter2" not in text
    assert os.stat(log).st_size > 0


# -- held out: policy combinations Flower would refuse later ----------------------------


def test_a_median_outnumbered_by_attackers_is_refused_by_the_policy(tmp_path: Path) -> None:
    """The coordinate-wise median tolerates f attackers among n >= 2f + 1 updates."""
    policy = tmp_path / "median.toml"
    policy.write_text('[federation]\naggregator = "median"\nbyzantine = 2\nmin-nodes = 3\n')
    line = _one_clean_line(_run("operator", "check-policy", str(policy)))
    assert "federation.aggregator = 'median' tolerating 2 attacker(s) needs min-nodes >= 5" in line
    policy.write_text('[federation]\naggregator = "median"\nbyzantine = 2\nmin-nodes = 5\n')
    assert _run("operator", "check-policy", str(policy)).exit_code == 0


# -- held out: commands that need an existing ledger never make one ----------------------


def _other_application_db(path: Path, *, alembic_version: str | None = None) -> bytes:
    """A SQLite file some other program wrote (with an Alembic version of its own)."""
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        connection.execute("INSERT INTO users (name) VALUES ('alice')")
        if alembic_version is not None:
            connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32))")
            connection.execute("INSERT INTO alembic_version VALUES (?)", (alembic_version,))
    connection.close()
    return path.read_bytes()


@pytest.mark.parametrize("command", [["issue", "--name", "auditor"], ["list"]])
def test_a_token_command_never_creates_a_ledger(tmp_path: Path, command: list[str]) -> None:
    missing = tmp_path / "gone" / "ledger.db"
    line = _one_clean_line(_run("operator", "token", *command, "--ledger", f"sqlite:///{missing}"))
    assert f"no ledger at sqlite:///{missing}: the file does not exist" in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (None, "is not a FedCommons ledger (no schema version table)"),
        ("ae1027a6acf", "is not a FedCommons ledger: its schema version 'ae1027a6acf' is none"),
    ],
)
def test_another_applications_database_is_refused_untouched(
    tmp_path: Path, version: str | None, message: str
) -> None:
    other = tmp_path / "app.db"
    before = _other_application_db(other, alembic_version=version)
    url = f"sqlite:///{other}"
    for command in (
        ["operator", "token", "issue", "--name", "auditor", "--ledger", url],
        ["operator", "token", "list", "--ledger", url],
        ["audit", "show", "--ledger", url],
    ):
        assert message in _one_clean_line(_run(*command))
        assert other.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.db"]


def test_demo_resume_without_its_ledger_creates_nothing(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    (workdir / "operator").mkdir(parents=True)
    (workdir / "operator" / "consortium.json").write_text("{}")
    before = _tree(tmp_path)
    line = _one_clean_line(_run("demo", "--resume", "--workdir", str(workdir)))
    assert f"no ledger at sqlite:///{workdir / 'ledger.db'}: the file does not exist" in line
    assert _tree(tmp_path) == before


def test_operator_resume_without_its_ledger_creates_nothing(operator: Path) -> None:
    (operator / "ledger.db").unlink()
    before = _tree(operator)
    line = _one_clean_line(_run("operator", "resume", "--run", "1", "--dir", str(operator)))
    assert f"no ledger at sqlite:///{operator / 'ledger.db'}: the file does not exist" in line
    assert _tree(operator) == before


# -- held out: text from the ledger, a request or a peer prints as itself ----------------

MARKUP = "evil[/]x [bold]b[/bold] [red]r [link=https://evil.example]l[/link] :warning: q[/]x"
"""Rich markup that would hide, restyle or link text, an emoji code and a stray close tag."""


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_admit_prints_a_licence_name_as_itself(
    tmp_path: Path, operator: Path, data_file: Path
) -> None:
    terms = tmp_path / "terms.toml"
    terms.write_text(
        f"name = {json.dumps(MARKUP)}\ncommercial = false\nderivatives = true\n"
        'share-alike = false\npurposes = ["research"]\n'
    )
    state = _enrolled(tmp_path / "state", operator, data_file, licence=str(terms))
    request = str(state / "enrolment-request.json")
    result = _run("operator", "admit", request, "--dir", str(operator), "--no-register")
    assert result.exit_code == 0, result.output
    assert f"custom:{MARKUP}), signing key" in _flat(result.output)


def test_audit_show_prints_reasons_and_names_as_they_were_recorded(tmp_path: Path) -> None:
    from ledger import ExclusionFact, enrol_participant, finish_run, record_privacy
    from ledger.runs import start_run

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    with ledger.session() as s:
        enrol_participant(s, "[red]lab[/red]", "academia")
        run_id = start_run(
            s, policy_sha256="a" * 64, policy_toml="[federation]\n", model="cnn",
            dataset="[bold]digits[/bold]", initial_model_sha256="a" * 64, planned_rounds=1,
            flower_run_id=7,
        ).id  # fmt: skip
        record_privacy(
            s, run_id, 1, charges=[], exclusions=[ExclusionFact("[red]lab[/red]", 3, 12, MARKUP)]
        )
        finish_run(s, run_id, "failed", reason=f"stopped: {MARKUP}")
    ledger.close()
    result = _run("audit", "show", "--ledger", url)
    assert result.exit_code == 0, result.output
    shown = _flat(result.output)
    assert "[red]lab[/red]" in shown and "on [bold]digits[/bold]," in shown
    assert f"excluded in round 1: [red]lab[/red] (code 12): {MARKUP}" in shown
    assert f"stopped: stopped: {MARKUP}" in shown


# -- held out: a simulation sized beyond its data or below its quorum ---------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--institutions", "1000000", "--partition", "iid"],
         "among 1000000 institutions: an IID split gives each one example at least, so at most "
         "1257 institutions"),
        (["--institutions", "200"],
         "among 200 institutions with 10 examples each: a non-IID split (Dirichlet alpha=0.5, "
         "seed 42) gives them to at most 64 institutions"),
        (["--institutions", "2"],
         "federation.min-nodes = 3 but 2 institution(s) take part"),
    ],
)  # fmt: skip
def test_a_simulation_its_data_or_quorum_cannot_carry_is_refused_leaving_no_folder(
    tmp_path: Path, options: list[str], message: str
) -> None:
    workdir = tmp_path / "runs" / "sim"
    line = _one_clean_line(_run("simulate", *options, "--workdir", str(workdir)))
    assert message in line
    assert list(tmp_path.iterdir()) == []


def test_a_demo_below_its_policys_quorum_is_refused_leaving_no_folder(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("[federation]\nmin-nodes = 4\n")
    workdir = tmp_path / "demo"
    line = _one_clean_line(_run("demo", "--policy", str(policy), "--workdir", str(workdir)))
    assert "federation.min-nodes = 4 but 3 institution(s) take part" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.toml"]


# -- held out: each message names what is wrong ------------------------------------------


def test_audit_serve_names_a_host_it_cannot_listen_on(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    Ledger(url).close()
    result = _run("audit", "serve", "--ledger", url, "--host", "10.9.9.9", "--port", "8089")
    assert result.exit_code == 2, result.output
    said = _flat(result.output)
    assert "Invalid value for --host: cannot listen on 10.9.9.9:8089" in said
    assert "--port" not in said


def _enrolled(state: Path, operator: Path, data_file: Path, licence: str = "CC-BY-4.0") -> Path:
    """``state`` after 'client enroll' of lab-a with ``data_file``: a real state folder."""
    enrolled = _run(
        "client", "enroll", "--state", str(state), "--institution", "lab-a", "--kind",
        "academia", "--data", str(data_file), "--licence", licence,
        "--consortium", str(operator / "consortium.json"),
    )  # fmt: skip
    assert enrolled.exit_code == 0, enrolled.output
    return state


def test_client_budget_refuses_what_is_not_a_state_folder(
    tmp_path: Path, operator: Path, data_file: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _one_clean_line(_run("client", "budget", "--state", str(empty)))
    assert f"{empty} is not a FedCommons state folder" in line
    line = _one_clean_line(_run("client", "budget", "--state", str(data_file)))
    assert f"{data_file} is not a folder: give the node's state folder" in line
    state = _enrolled(tmp_path / "state", operator, data_file)
    result = _run("client", "budget", "--state", str(state))
    assert result.exit_code == 0, result.output
    assert f"no privacy budget charged yet in {state}" in _flat(result.output)


def test_client_budget_warns_of_another_institutions_history(
    tmp_path: Path, operator: Path, data_file: Path
) -> None:
    from client.accountant import history_path, locked_history

    state = _enrolled(tmp_path / "state", operator, data_file)
    with locked_history(state, institution="lab-b", dataset_sha256="b" * 64, num_records=30) as h:
        h.history = [(1.2, 0.5, 4)]
    result = _run("client", "budget", "--state", str(state), "--format", "json")
    assert result.exit_code == 0, result.output
    assert [row["institution"] for row in json.loads(result.stdout)["datasets"]] == ["lab-b"]
    warning = _flat(result.stderr)
    assert f"warning: {history_path(state, 'b' * 64)} is lab-b's budget history, not lab-a's" in (
        warning
    )
