"""Config validation: every error names its key path and line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from component.config import load_config, parse_config, resolve_config_path
from component.errors import ConfigError


@pytest.fixture
def sa_file(tmp_path: Path) -> Path:
    path = tmp_path / "fcm.json"
    path.write_text("{}")
    return path


def valid(sa_file: Path) -> str:
    return textwrap.dedent(
        f"""\
        xmpp:
          jid: push.example.com
          host: 127.0.0.1
          port: 5275
          secret: ${{OFNOTIFY_SECRET}}
        storage:
          url: sqlite:///ofnotify.db
        channels:
          phone:
            type: fcm
            project_id: my-project
            service_account_file: {sa_file}
        rules:
          - event: offline_message
            channel: phone
        privacy:
          include_sender: true
          include_body: false
        """
    )


ENV = {"OFNOTIFY_SECRET": "s3cret"}


def problems(text: str, env: dict[str, str] | None = None) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", ENV if env is None else env)
    return [(p.path, p.line, p.message) for p in info.value.problems]


def test_valid_config_loads_with_defaults(sa_file: Path) -> None:
    config = parse_config(valid(sa_file), "f.yaml", ENV)
    assert config.xmpp.jid == "push.example.com"
    assert config.xmpp.secret.get_secret_value() == "s3cret"
    assert config.channels["phone"].project_id == "my-project"
    assert config.rules[0].delay == 0
    assert config.delivery.max_attempts == 8
    assert config.registration_channel() == "phone"
    assert "s3cret" not in repr(config)


def test_unset_environment_variable(sa_file: Path) -> None:
    assert problems(valid(sa_file), env={}) == [
        ("xmpp.secret", 5, "environment variable OFNOTIFY_SECRET is not set")
    ]


def test_env_default_is_used(sa_file: Path) -> None:
    text = valid(sa_file).replace("${OFNOTIFY_SECRET}", "${NOPE:-fallback}")
    assert parse_config(text, "f", {}).xmpp.secret.get_secret_value() == "fallback"


def test_unknown_key(sa_file: Path) -> None:
    text = valid(sa_file).replace("  port: 5275\n", "  port: 5275\n  prot: 1\n")
    assert problems(text) == [("xmpp.prot", 5, "unknown key")]


def test_wrong_type(sa_file: Path) -> None:
    text = valid(sa_file).replace("port: 5275", "port: many")
    [(path, line, message)] = problems(text)
    assert (path, line) == ("xmpp.port", 4)
    assert "integer" in message


def test_missing_required_field(sa_file: Path) -> None:
    text = valid(sa_file).replace("    project_id: my-project\n", "")
    assert problems(text) == [("channels.phone.project_id", 9, "required key is missing")]


def test_unknown_channel_in_rule(sa_file: Path) -> None:
    text = valid(sa_file).replace("    channel: phone", "    channel: pager")
    assert problems(text) == [
        ("rules[0].channel", 15, "unknown channel 'pager' (configured: phone)")
    ]


def test_unknown_channel_type(sa_file: Path) -> None:
    text = valid(sa_file).replace("type: fcm", "type: pigeon")
    [(path, line, message)] = problems(text)
    assert (path, line) == ("channels.phone", 9)
    assert "unknown channel type" in message


def test_missing_service_account_file(sa_file: Path) -> None:
    text = valid(sa_file).replace(str(sa_file), "/nonexistent/fcm.json")
    [(path, line, _)] = problems(text)
    assert (path, line) == ("channels.phone.service_account_file", 12)


def test_bad_duration(sa_file: Path) -> None:
    text = valid(sa_file).replace("    channel: phone\n", "    channel: phone\n    delay: soon\n")
    [(path, line, message)] = problems(text)
    assert (path, line) == ("rules[0].delay", 16)
    assert "not a duration" in message


def test_durations_accept_units(sa_file: Path) -> None:
    text = valid(sa_file).replace("    channel: phone\n", "    channel: phone\n    delay: 10m\n")
    assert parse_config(text, "f", ENV).rules[0].delay == 600


def test_component_jid_must_be_a_domain(sa_file: Path) -> None:
    text = valid(sa_file).replace("jid: push.example.com", "jid: bot@push.example.com/x")
    [(path, line, _)] = problems(text)
    assert (path, line) == ("xmpp.jid", 2)


def test_duplicate_key(sa_file: Path) -> None:
    text = valid(sa_file).replace("  port: 5275\n", "  port: 5275\n  port: 5276\n")
    assert problems(text) == [("xmpp.port", 5, "duplicate key")]


def test_broken_yaml_reports_line() -> None:
    [(path, line, message)] = problems("xmpp:\n  jid: [unclosed\n  host: x\n")
    assert path == ""
    assert line == 3
    assert message.startswith("not valid YAML")


def test_all_problems_reported_at_once(sa_file: Path) -> None:
    text = (
        valid(sa_file)
        .replace("port: 5275", "port: many")
        .replace("    channel: phone", "    channel: pager")
        .replace("include_body: false", "include_body: perhaps")
    )
    found = problems(text, env={})
    assert [p for p, _, _ in found] == [
        "xmpp.port",
        "xmpp.secret",
        "rules[0].channel",
        "privacy.include_body",
    ]


def test_several_fcm_channels_need_a_registration_channel(sa_file: Path) -> None:
    text = valid(sa_file).replace(
        "rules:",
        f"  tablet:\n    type: fcm\n    project_id: p2\n    service_account_file: {sa_file}\nrules:",
    )
    assert problems(text)[0][0] == "registrations.channel"
    fixed = text + "registrations:\n  channel: tablet\n"
    assert parse_config(fixed, "f", ENV).registration_channel() == "tablet"


def test_rendered_error_is_compiler_style(sa_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "of.yaml"
    path.write_text(valid(sa_file).replace("port: 5275", "port: many"))
    with pytest.raises(ConfigError) as info:
        load_config(path, ENV)
    assert info.value.render().startswith(f"{path}:4: xmpp.port: ")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml", ENV)
    assert "cannot read" in info.value.render()


def test_config_path_resolution() -> None:
    assert resolve_config_path("a.yaml", {"OFNOTIFY_CONFIG": "b.yaml"}) == Path("a.yaml")
    assert resolve_config_path(None, {"OFNOTIFY_CONFIG": "b.yaml"}) == Path("b.yaml")
    assert resolve_config_path(None, {}) == Path("ofnotify.yaml")


def test_example_config_is_valid(monkeypatch: pytest.MonkeyPatch, sa_file: Path) -> None:
    example = Path(__file__).parents[2] / "ofnotify.example.yaml"
    text = example.read_text().replace("/etc/ofnotify/fcm.json", str(sa_file))
    parse_config(text, str(example), {"OFNOTIFY_SECRET": "x"})
