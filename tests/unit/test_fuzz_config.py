"""Hostile input for the YAML config loader: a `Config` or a `ConfigError`, nothing else.

`ofnotify check-config` runs on whatever file it is pointed at; a traceback instead of
"line 12: rules[0].delay: ..." is a bug, and so is a file that loads but holds values
the service cannot use.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, cast

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from component.config import Config, parse_config
from component.errors import ConfigError
from tests.support.fuzzing import peak_bytes

MB = 1024 * 1024
MAX_SECONDS = dt.timedelta.max.total_seconds()
ENV = {"OFNOTIFY_SECRET": "s3cret", "EMPTY": "", "WEIRD": "${OFNOTIFY_SECRET}\n\x00📱"}
SERVICE_ACCOUNT = __file__  # any existing file: FilePath is checked


def valid_data() -> dict[str, Any]:
    return {
        "xmpp": {"jid": "push.example.com", "secret": "${OFNOTIFY_SECRET}"},
        "storage": {"url": "sqlite:///ofnotify.db"},
        "channels": {
            "phone": {
                "type": "fcm",
                "project_id": "my-project",
                "service_account_file": SERVICE_ACCOUNT,
            },
            "mail": {"type": "email", "host": "smtp.example.com", "sender": "Chat <c@example.com>"},
        },
        "rules": [
            {"event": "offline_message", "channel": "phone", "delay": "5s"},
            {"event": "offline_message", "channel": "mail", "delay": "10m", "digest": True},
        ],
        "privacy": {"include_sender": True, "include_body": False},
        "registrations": {"channel": "phone", "max_per_account": 5},
        "delivery": {"backoff_initial": "2s", "backoff_max": "10m"},
        "accounts": {"jenny@example.com": {"email": "jenny@example.com", "locale": "ko"}},
    }


VALID = yaml.safe_dump(valid_data(), sort_keys=False)


def load(text: str | bytes, env: dict[str, str] | None = None) -> Config | None:
    """Parse; a ConfigError must be well formed. Returns the Config, or None."""
    try:
        # parse_config takes text; PyYAML also reads bytes (UTF-8/16 by BOM), which is
        # what a file read in binary would give.
        return parse_config(cast(str, text), "f.yaml", ENV if env is None else env)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError without problems"
        lines = (text.count(b"\n") if isinstance(text, bytes) else text.count("\n")) + 2
        for problem in exc.problems:
            assert problem.line is None or 1 <= problem.line <= lines, problem
            assert isinstance(problem.message, str) and problem.message
        assert str(exc) and exc.render()
        return None


def check_usable(config: Config) -> None:
    """A loaded config holds values the service can use: durations that fit a timedelta."""
    durations = [
        config.xmpp.keepalive_interval,
        config.xmpp.reconnect_max_delay,
        config.delivery.backoff_initial,
        config.delivery.backoff_max,
        config.delivery.lease,
        *(rule.delay for rule in config.rules),
        *(rule.min_interval for rule in config.rules),
    ]
    for seconds in durations:
        assert math.isfinite(seconds) and 0 <= seconds <= MAX_SECONDS, seconds


def test_the_valid_base_loads() -> None:
    config = load(VALID)
    assert config is not None and config.registration_channel() == "phone"


# -- anything at all -------------------------------------------------------------------

FUZZ = settings(max_examples=150, deadline=None)


@FUZZ
@given(st.text(max_size=200))
def test_any_text_loads_or_is_a_config_error(text: str) -> None:
    load(text)


@FUZZ
@given(st.binary(max_size=200))
def test_any_bytes_load_or_are_a_config_error(data: bytes) -> None:
    load(data)


# YAML's syntax in pieces: anchors, aliases, tags, merge keys, flow and block
# collections, odd scalars that resolve to dates, numbers and infinities.
TOKENS = [
    "a:", "xmpp:", "rules:", "channels:", "delay:", "- ", "? ", ": ", "&x ", "*x", "&y ", "*y",
    "!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!binary ", "!!str ", "!!set ", "!!omap ",
    "!!python/object:os.system ", "!local ", "<<: ", "{", "}", "[", "]", ", ", "\n", "\n  ",
    "\n    ", "'", '"', "|", ">", "# c", "${OFNOTIFY_SECRET}", "${NOPE}", "${X:-d}", "---",
    "...", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "2020-02-30", "2020-01-01T10:00:00Z", "0x",
    "0o9", "0b2", "1_", "1:70", ".inf", "-.inf", ".nan", "~", "null", "yes", "1e999",
    "1" + "0" * 400, "9" * 5000, "📱", "\u202e", "\t", "\\", "%", "@", "`", "\ufeff",
]  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(TOKENS) | st.text(max_size=4), max_size=30).map("".join))
@example("a: 2020-02-30\n")  # PyYAML raises ValueError building the date
@example("a: !!bool maybe\n")  # ... KeyError
@example("a: !!timestamp x\n")  # ... AttributeError
@example("a: !!int ''\n")  # ... IndexError
@example("a: &x [*x]\n")  # a list that contains itself
@example("a: &x {b: 1}\nc:\n  <<: *x\n")  # merge keys
@example("[" * 5000)  # the composer recurses per level
def test_any_yaml_token_soup_loads_or_is_a_config_error(text: str) -> None:
    load(text)


# -- the valid file with one value replaced ----------------------------------------------------

PATHS: list[tuple[str | int, ...]] = [
    ("xmpp",),
    ("xmpp", "jid"),
    ("xmpp", "port"),
    ("xmpp", "secret"),
    ("xmpp", "keepalive_interval"),
    ("xmpp", "reconnect_max_delay"),
    ("storage", "url"),
    ("channels",),
    ("channels", "phone"),
    ("channels", "phone", "type"),
    ("channels", "phone", "service_account_file"),
    ("channels", "phone", "endpoint"),
    ("channels", "phone", "concurrency"),
    ("channels", "mail", "sender"),
    ("channels", "mail", "port"),
    ("channels", "mail", "templates"),
    ("rules",),
    ("rules", 0),
    ("rules", 0, "channel"),
    ("rules", 0, "delay"),
    ("rules", 1, "min_interval"),
    ("registrations", "channel"),
    ("registrations", "max_per_account"),
    ("delivery", "max_attempts"),
    ("delivery", "backoff_max"),
    ("delivery", "lease"),
    ("accounts",),
    ("accounts", "jenny@example.com", "locale"),
    ("openfire",),
    ("privacy", "include_body"),
    ("unknown",),
]
ODD_VALUES = [
    None, True, 0, -1, 2**63, 10**400, 1e308, float("inf"), float("-inf"), float("nan"), "",
    " ", "0", "-5s", "5 s", "1.5h", "9" * 400 + "s", "1e3s", "5x", "\x00", "a\nb",
    "${NOPE}", "${WEIRD}", "📱\u202e", "x" * 100_000, [], [None], {}, {"type": "fcm"},
    {"": ""}, [[[[[]]]]], b"\xff", "2020-02-30",
]  # fmt: skip


def replace(data: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return data


@FUZZ
@given(st.sampled_from(PATHS), st.sampled_from(ODD_VALUES) | st.text(max_size=20) | st.integers())
@example(("rules", 0, "delay"), 10**400)  # float(10**400) raises OverflowError
def test_one_odd_value_anywhere_gives_a_config_or_a_config_error(
    path: tuple[str | int, ...], value: Any
) -> None:
    load(yaml.safe_dump(replace(valid_data(), path, value), sort_keys=False))


DURATION_PATHS = [("rules", 0, "delay"), ("xmpp", "keepalive_interval"), ("delivery", "lease")]
ABSURD_DURATIONS = [
    10**400,  # float(10**400) raises OverflowError
    float("inf"),
    float("nan"),
    "9" * 400 + "s",  # float("999...") is inf
    1e300,  # finite, but no timedelta holds it: `now + timedelta(seconds=delay)` fails
]


def test_durations_that_no_timedelta_can_hold_are_config_errors() -> None:
    accepted, crashed = [], []
    for path in DURATION_PATHS:
        for value in ABSURD_DURATIONS:
            where = f"{'.'.join(map(str, path))}: {str(value)[:12]}"
            text = yaml.safe_dump(replace(valid_data(), path, value), sort_keys=False)
            try:
                if load(text) is not None:
                    accepted.append(where)
            except Exception as exc:
                crashed.append(f"{where} -> {type(exc).__name__}")
    assert (accepted, crashed) == ([], [])


# -- specific shapes ---------------------------------------------------------------------------


def laughs(levels: int) -> str:
    """YAML's billion laughs: 10**levels values from a few hundred bytes."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_alias_expansion_is_bounded() -> None:
    text = VALID + laughs(9)  # 10**9 values if expanded

    def refuse() -> None:
        with pytest.raises(ConfigError, match="aliases expand to too many values"):
            parse_config(text, "f.yaml", ENV)

    peak = peak_bytes(refuse)
    assert peak < 48 * MB, f"{peak / MB:.1f} MB for {len(text)} bytes of YAML"


def test_aliases_that_stay_small_still_work() -> None:
    text = VALID.replace("rules:\n", "x-delay: &d 5s\nrules:\n", 1)
    with pytest.raises(ConfigError, match="x-delay: unknown key"):  # the anchor itself
        parse_config(text, "f.yaml", ENV)
    data = valid_data()
    text = yaml.dump(
        {**data, "rules": [data["rules"][0], data["rules"][0]]}, Dumper=yaml.SafeDumper
    )
    assert "*id001" in text and load(text) is not None


@pytest.mark.parametrize(
    "text,message",
    [
        pytest.param("a: &x [*x]\n", "nested more than", id="list-containing-itself"),
        pytest.param("a: &x {b: *x}\n", "nested more than", id="map-containing-itself"),
        pytest.param("[" * 10_000 + "]" * 10_000, "nested too deeply", id="10k-nested-lists"),
        pytest.param(
            "a: " + "{a: " * 3_000 + "1" + "}" * 3_000, "nested too deeply", id="3k-nested-maps"
        ),
        pytest.param("a: " + "[" * 100 + "]" * 100, "nested more than", id="100-nested-lists"),
        pytest.param("a: &x {b: 1}\nc:\n  <<: *x\n", "merge keys", id="merge-key"),
        pytest.param("a: 2020-02-30\n", "cannot read '2020-02-30' as timestamp", id="bad-date"),
        pytest.param("a: !!int abc\n", "cannot read 'abc' as int", id="bad-int-tag"),
        pytest.param("2020-02-30: x\n", "as timestamp", id="bad-date-key"),
        pytest.param("? [a, b]\n: 1\n", "keys must be strings", id="list-key"),
        pytest.param("? &k [*k]\n: 1\n", "keys must be strings", id="recursive-key"),
        pytest.param("~", "required key is missing", id="null-document"),
        pytest.param("!", "required key is missing", id="empty-tag-document"),
    ],
)
def test_shapes_pyyaml_cannot_build_are_reported(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", ENV)
    assert message in str(info.value)
    load(text)  # well-formed problems


def test_a_1mb_file_loads_in_bounded_memory() -> None:
    big = "x" * MB
    text = VALID.replace("my-project", big)
    config = load(text)
    assert config is not None and config.channels["phone"].project_id == big  # type: ignore[union-attr]
    # tracemalloc slows PyYAML's scanner twentyfold: measure on a quarter of it.
    quarter = VALID.replace("my-project", "x" * (MB // 4))
    peak = peak_bytes(lambda: parse_config(quarter, "f.yaml", ENV))
    assert peak < 16 * MB, f"{peak / MB:.1f} MB for {len(quarter) / MB:.2f} MB of YAML"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("\x00", id="nul"),
        pytest.param("a: \x07\n", id="bell"),
        pytest.param("a: \ud800\n", id="lone-surrogate"),
        pytest.param("\ufeff" + VALID, id="bom"),
        pytest.param(VALID.replace("push.example.com", "push.example.com\u202e"), id="rlo-in-jid"),
        pytest.param(VALID.replace("my-project", "📱👩\u200d👩\u200d👧"), id="emoji-value"),
        pytest.param(VALID.replace("jenny@example.com", "ג'ני@example.com", 1), id="rtl-key"),
        pytest.param(VALID.replace("  jid:", "  \u202ejid:"), id="rlo-in-key"),
        pytest.param(VALID.replace("\n", "\r\n"), id="crlf"),
        pytest.param(VALID.replace("\n", "\r"), id="cr"),
        pytest.param(VALID + "\t", id="trailing-tab"),
        pytest.param(VALID + "---\n" + VALID, id="two-documents"),
        pytest.param(VALID[: len(VALID) // 2], id="half"),
        pytest.param("%YAML 9.9\n---\n" + VALID, id="yaml-9.9"),
    ],
)
def test_control_characters_emoji_rtl_and_truncation(text: str) -> None:
    config = load(text)
    if config is not None:
        check_usable(config)


@pytest.mark.parametrize(
    "env",
    [
        {"OFNOTIFY_SECRET": "${OFNOTIFY_SECRET}"},  # no recursive substitution
        {"OFNOTIFY_SECRET": "x" * MB},
        {"OFNOTIFY_SECRET": "\x00\n\u202e📱"},
        {},
    ],
)
def test_hostile_environment_values(env: dict[str, str]) -> None:
    config = load(VALID, env)
    if config is not None:
        assert config.xmpp.secret.get_secret_value() == env["OFNOTIFY_SECRET"]


@FUZZ
@given(st.integers(0, len(VALID)))
def test_every_truncation_of_a_valid_file(cut: int) -> None:
    load(VALID[:cut])


def test_many_small_problems_are_all_reported() -> None:
    rules = "\n".join(f"  - {{event: offline_message, channel: nope{i}}}" for i in range(2_000))
    text = VALID.split("rules:")[0] + "rules:\n" + rules + "\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml", ENV)
    assert len(info.value.problems) >= 2_000
