"""The one YAML file: typed, strict, validated before anything starts.

Unknown keys are errors (a typo must not silently disable a rule); every problem is
reported with its key path and line, all at once.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)

from .durations import Duration
from .errors import ConfigError, ConfigProblem
from .yamlsource import dotted, load_yaml

DEFAULT_CONFIG_PATH = "ofnotify.yaml"
CONFIG_ENV = "OFNOTIFY_CONFIG"

_DOMAIN = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,63})*$"
)


def _readable_file(value: Path) -> Path:
    # pydantic's FilePath lets OSError out (e.g. a name too long); every failure here is
    # a problem with the operator's value, so say it like one.
    try:
        if value.is_file():
            return value
    except OSError as exc:
        raise ValueError(f"cannot be checked: {exc.strerror}") from None
    raise ValueError("is not an existing file")


ReadableFile = Annotated[Path, AfterValidator(_readable_file)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class XmppConfig(Strict):
    jid: str = Field(description="The component's JID, a subdomain of the XMPP server")
    host: str = "127.0.0.1"
    port: int = Field(5275, ge=1, le=65535)
    secret: SecretStr
    keepalive_interval: Duration = 60.0
    reconnect_max_delay: Duration = 60.0

    @field_validator("jid")
    @classmethod
    def _bare_domain(cls, value: str) -> str:
        if not _DOMAIN.match(value):
            raise ValueError(
                "must be a bare domain such as push.example.com (no user@, no /resource)"
            )
        return value.lower()


class StorageConfig(Strict):
    url: str = "sqlite:///ofnotify.db"

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
            raise ValueError("only sqlite:/// and postgresql:// URLs are supported")
        return value


class FcmChannelConfig(Strict):
    type: Literal["fcm"]
    project_id: str = Field(min_length=1)
    service_account_file: ReadableFile
    endpoint: str | None = Field(
        None, description="Base URL replacing https://fcm.googleapis.com (emulator, proxy)"
    )
    timeout: Duration = 10.0
    concurrency: int = Field(64, ge=1, le=256)

    @field_validator("endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// base URL")
        return value.rstrip("/") if value else value


class EmailChannelConfig(Strict):
    type: Literal["email"]
    host: str
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: SecretStr | None = None
    sender: str = Field(description='From header, e.g. "Chat <chat@example.com>"')
    timeout: Duration = 30.0
    # Directory whose files override the shipped templates (same names).
    templates: Path | None = None
    default_locale: Literal["en", "ko"] = "en"
    # Link shown in the mail ("open the chat"); optional.
    app_url: str | None = None

    @field_validator("sender")
    @classmethod
    def _one_address(cls, value: str) -> str:
        from email.utils import parseaddr

        if "\r" in value or "\n" in value or "@" not in parseaddr(value)[1]:
            raise ValueError('must be one address, e.g. "Chat <chat@example.com>"')
        return value


ChannelConfig = Annotated[FcmChannelConfig | EmailChannelConfig, Field(discriminator="type")]


class RuleConfig(Strict):
    event: Literal["offline_message"]
    channel: str
    # Wait this long; send only what is still unread then.
    delay: Duration = 0.0
    # One notification for everything unread (grouped by sender) instead of one each.
    digest: bool = False
    # At most one notification per person on this channel per interval.
    min_interval: Duration = 0.0
    # Drop the pending notification once the messages were delivered or displayed.
    cancel_on_read: bool = True


class OpenfireConfig(Strict):
    database_url: str
    domain: str
    poll_interval: Duration = 1.0
    # Openfire's push plugin also publishes for users who are online (and again for
    # each offline message flushed at login); skip those when ofPresence says online.
    suppress_when_online: bool = True
    # A watcher push waits this long for the XEP-0357 publish of the same message, so
    # that the person gets one push, not two.
    push_grace: Duration = 3.0

    @field_validator("database_url")
    @classmethod
    def _supported(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        if not scheme.startswith(("postgresql", "mysql", "mariadb", "sqlite")):
            raise ValueError("use a postgresql://, mysql:// or mariadb:// URL")
        return value


class AccountConfig(Strict):
    email: str | None = None
    name: str | None = None
    locale: Literal["en", "ko"] | None = None


class PrivacyConfig(Strict):
    include_sender: bool = True
    include_body: bool = False


class RegistrationsConfig(Strict):
    # Which FCM channel `register-push-fcm` binds devices to; optional with one channel.
    channel: str | None = None
    # A flood from one account must not fill the database.
    max_per_account: int = Field(20, ge=1, le=10_000)


class LimitsConfig(Strict):
    # Pushes one account may receive per second (Openfire's own plugin allows 5); more
    # are not dropped but folded into one push per device and conversation.
    pushes_per_second: float = Field(5.0, gt=0)
    push_burst: int = Field(5, ge=1)


class DeliveryConfig(Strict):
    max_attempts: int = Field(8, ge=1, le=100)
    backoff_initial: Duration = 2.0
    backoff_max: Duration = 600.0
    # A claimed row whose sender died becomes due again after this long.
    lease: Duration = 60.0
    batch_size: int = Field(256, ge=1, le=10_000)


class HttpConfig(Strict):
    # host:port for /metrics and /healthz; absent = no HTTP listener.
    listen: str

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9464")
        return value


class LoggingConfig(Strict):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error", "DEBUG", "INFO", "WARNING", "ERROR"] = (
        "info"
    )


class Config(Strict):
    xmpp: XmppConfig
    storage: StorageConfig = StorageConfig()
    channels: dict[str, ChannelConfig] = Field(min_length=1)
    rules: list[RuleConfig] = Field(min_length=1)
    privacy: PrivacyConfig = PrivacyConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    registrations: RegistrationsConfig = RegistrationsConfig()
    limits: LimitsConfig = LimitsConfig()
    openfire: OpenfireConfig | None = None
    http: HttpConfig | None = None
    logging: LoggingConfig = LoggingConfig()
    # Per-account overrides, keyed by bare JID.
    accounts: dict[str, AccountConfig] = Field(default_factory=dict)

    def fcm_channel_names(self) -> list[str]:
        return [name for name, ch in self.channels.items() if ch.type == "fcm"]

    def registration_channel(self) -> str:
        """The FCM channel devices register for (validated at load, see below)."""
        if self.registrations.channel:
            return self.registrations.channel
        names = self.fcm_channel_names()
        return names[0] if names else ""


def resolve_config_path(cli_value: str | None, env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(cli_value or env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def parse_config(
    text: str, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Config:
    loaded = load_yaml(text, env)
    if loaded.data is None:  # not YAML at all: nothing else can be checked
        raise ConfigError(source, loaded.problems)
    if not isinstance(loaded.data, dict):
        raise ConfigError(source, [ConfigProblem("", "the file must be a mapping of sections", 1)])
    # Report everything in one go: environment, schema and cross-references.
    problems = list(loaded.problems)
    config: Config | None = None
    try:
        config = Config.model_validate(loaded.data)
    except ValidationError as exc:
        problems += _problems_from(exc, loaded.line_of)
    problems += _unknown_channels(loaded.data, loaded.line_of)
    if config is not None:
        problems += _registration_channel_problems(config, loaded.line_of)
    if problems or config is None:
        problems.sort(key=lambda p: p.line or 0)
        raise ConfigError(source, problems)
    return config


def _registration_channel_problems(config: Config, line_of: Any) -> list[ConfigProblem]:
    fcm = config.fcm_channel_names()
    wanted = config.registrations.channel
    path: tuple[str | int, ...] = ("registrations", "channel")
    if wanted is None and len(fcm) > 1:
        message = f"several fcm channels ({', '.join(fcm)}): name the one devices register for"
        return [ConfigProblem(dotted(path), message, line_of(path))]
    if wanted is not None and wanted not in fcm:
        message = f"{wanted!r} is not an fcm channel (fcm channels: {', '.join(fcm) or 'none'})"
        return [ConfigProblem(dotted(path), message, line_of(path))]
    return []


def _unknown_channels(data: dict[str, Any], line_of: Any) -> list[ConfigProblem]:
    channels = data.get("channels")
    rules = data.get("rules")
    if not isinstance(channels, dict) or not isinstance(rules, list):
        return []
    known = ", ".join(sorted(map(str, channels))) or "none"
    problems = []
    for index, rule in enumerate(rules):
        name = rule.get("channel") if isinstance(rule, dict) else None
        if isinstance(name, str) and name not in channels:
            path = ("rules", index, "channel")
            problems.append(
                ConfigProblem(
                    dotted(path), f"unknown channel {name!r} (configured: {known})", line_of(path)
                )
            )
    return problems


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("", f"cannot read: {exc.strerror}")]) from None
    return parse_config(text, str(path), env)


_LITERAL_SECRET = re.compile(r"^\s*(secret|password)\s*:\s*(?![\"']?\$\{)\S", re.MULTILINE)


def exposes_secrets(path: Path) -> bool:
    """Readable by other users while holding a secret written out (not `${VAR}`)."""
    try:
        if not path.stat().st_mode & stat.S_IROTH:
            return False
        return bool(_LITERAL_SECRET.search(path.read_text(encoding="utf-8")))
    except OSError:
        return False


def _problems_from(exc: ValidationError, line_of: Any) -> list[ConfigProblem]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        # Drop pydantic's discriminator tags (e.g. 'fcm') from the location.
        loc = error["loc"]
        if len(loc) > 2 and loc[0] == "channels" and loc[2] in _CHANNEL_TAGS:
            loc = loc[:2] + loc[3:]
        problems.append(ConfigProblem(dotted(loc), _friendly(error), line_of(loc)))
    return problems


_CHANNEL_TAGS = {"fcm", "email"}


def _friendly(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return f"unknown channel type (expected one of: {', '.join(sorted(_CHANNEL_TAGS))})"
    if kind == "union_tag_not_found":
        return "a channel needs a `type`"
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
