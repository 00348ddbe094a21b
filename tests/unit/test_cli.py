"""The CLI in-process: config checking, permissions warning, exit codes."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from component.cli import main
from tests.unit.test_config import valid


def write(tmp_path: Path, text: str, mode: int) -> Path:
    sa = tmp_path / "fcm.json"
    sa.write_text("{}")
    path = tmp_path / "of.yaml"
    path.write_text(text.replace("SA_FILE", str(sa)))
    path.chmod(mode)
    return path


def test_check_config_ok_and_private(tmp_path: Path) -> None:
    path = write(tmp_path, valid(Path("SA_FILE")), 0o600)
    result = CliRunner().invoke(
        main, ["check-config", "--config", str(path)], env={"OFNOTIFY_SECRET": "x"}
    )
    assert result.exit_code == 0
    assert "OK" in result.output and "readable by other users" not in result.output


def test_world_readable_config_warns_only_with_literal_secrets(tmp_path: Path) -> None:
    text = valid(Path("SA_FILE")).replace("${OFNOTIFY_SECRET}", "literal-secret")
    path = write(tmp_path, text, 0o644)
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 0
    assert "readable by other users and holds secrets" in result.output
    # Secrets from the environment: nothing to protect in the file itself.
    path = write(tmp_path, valid(Path("SA_FILE")), 0o644)
    env = {"OFNOTIFY_SECRET": "x"}
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)], env=env)
    assert "readable by other users" not in result.output


def test_invalid_config_exits_2_with_lines(tmp_path: Path) -> None:
    path = write(tmp_path, valid(Path("SA_FILE")).replace("port: 5275", "port: x"), 0o600)
    result = CliRunner().invoke(
        main, ["check-config", "--config", str(path)], env={"OFNOTIFY_SECRET": "x"}
    )
    assert result.exit_code == 2
    assert f"{path}:4: xmpp.port:" in result.output


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, valid(Path("SA_FILE")), 0o600)
    result = CliRunner().invoke(
        main, ["check-config"], env={"OFNOTIFY_SECRET": "x", "OFNOTIFY_CONFIG": str(path)}
    )
    assert result.exit_code == 0, result.output


def test_deliveries_on_empty_database(tmp_path: Path) -> None:
    text = valid(Path("SA_FILE")).replace("sqlite:///ofnotify.db", f"sqlite:///{tmp_path}/d.db")
    path = write(tmp_path, text, 0o600)
    env = {"OFNOTIFY_SECRET": "x"}
    assert (
        "(nothing matched)"
        in CliRunner().invoke(main, ["deliveries", "--config", str(path)], env=env).output
    )
    bad = CliRunner().invoke(
        main, ["deliveries", "--config", str(path), "--since", "soon"], env=env
    )
    assert bad.exit_code == 2 and "--since" in bad.output
    requeue = CliRunner().invoke(main, ["requeue", "--config", str(path)], env=env)
    assert requeue.exit_code == 2
