#!/usr/bin/env python3
"""Register an FCM token with ofnotify and enable XEP-0357 push for an account (slixmpp).

What a mobile client does after it obtained (or refreshed) its FCM token:

1. log in to its own XMPP server as the user;
2. execute the XEP-0050 ad-hoc command ``register-push-fcm`` on the ofnotify component,
   submitting ``token`` and ``device-id``; the result form holds the app server ``jid``,
   the push ``node`` and a ``secret``;
3. send ``<enable xmlns='urn:xmpp:push:0'/>`` with that jid and node and the secret in a
   publish-options form to its own server, which from then on publishes to ofnotify
   whenever a message arrives while no client of the account is online;
4. log out.

Usage (the same options and environment variables as ``register-push.js``; prefer the
environment for the password)::

    pip install 'slixmpp>=1.17,<2'
    XMPP_PASSWORD=secret python3 register_push.py \\
        --service xmpp://127.0.0.1:5222 --domain example.com --username jenny \\
        --component push.example.com --token "$FCM_TOKEN" --device-id "$DEVICE_ID"

On success the push node is the only line printed on stdout (diagnostics go to stderr)
and the exit status is 0; any failure exits with status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0004 import Form

PUSH_NS = "urn:xmpp:push:0"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"
TIMEOUT = 15.0  # seconds, for the login and for every request

# name -> (environment variable, required?)
OPTIONS = {
    "service": ("XMPP_SERVICE", True),  # xmpp://host:port (STARTTLS if offered), xmpps://...
    "domain": ("XMPP_DOMAIN", True),  # the account's domain, e.g. example.com
    "username": ("XMPP_USERNAME", True),  # the local part: jenny for jenny@example.com
    "password": ("XMPP_PASSWORD", True),
    "resource": ("XMPP_RESOURCE", False),  # empty: the server assigns one
    "component": ("OFNOTIFY_JID", True),  # ofnotify's component JID, e.g. push.example.com
    "token": ("FCM_TOKEN", True),  # from FirebaseMessaging.getToken() on the phone
    "device-id": ("DEVICE_ID", True),  # stable per installation, e.g. ANDROID_ID
    "muc": ("PUSH_MUC", False),  # optional: register for one group chat (bare room JID)
    "insecure": ("XMPP_INSECURE", False),  # "1": log in without TLS (local test servers only)
}


class Failure(Exception):
    """Something went wrong; the message says what."""


def read_options(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, (env, _required) in OPTIONS.items():
        parser.add_argument(f"--{name}", dest=name, metavar=env, help=f"default: ${env}")
    args = vars(parser.parse_args(argv))
    options = {name: args[name] or os.environ.get(env, "") for name, (env, _) in OPTIONS.items()}
    missing = [f"--{n} (or {env})" for n, (env, req) in OPTIONS.items() if req and not options[n]]
    if missing:
        parser.error("missing " + ", ".join(missing))
    return options


def make_client(opts: dict[str, str]) -> tuple[ClientXMPP, str, int]:
    """A ClientXMPP for the account, and the address to connect to."""
    insecure = opts["insecure"] == "1"
    url = urlsplit(opts["service"])
    if url.scheme not in ("xmpp", "xmpps") or not url.hostname:
        raise Failure(
            f"--service must look like xmpp://host:port or xmpps://host:port, not {url.geturl()!r}"
        )
    jid = f"{opts['username']}@{opts['domain']}"
    if opts["resource"]:
        jid += f"/{opts['resource']}"
    xmpp = ClientXMPP(
        jid,
        opts["password"],
        plugin_config={
            # slixmpp refuses to authenticate on an unencrypted stream, which is right;
            # --insecure 1 allows it for a local test server without TLS. slixmpp still
            # takes the strongest mechanism offered: SCRAM before PLAIN.
            "feature_mechanisms": {"unencrypted_plain": insecure, "unencrypted_scram": insecure},
        },
    )
    # Connect exactly where --service says, no DNS SRV lookup: xmpps:// is TLS from the
    # first byte; xmpp:// is plain TCP, upgraded with STARTTLS whenever the server offers
    # it. (By default slixmpp would first try a TLS handshake on the plain port, too.)
    direct_tls = url.scheme == "xmpps"
    xmpp.enable_direct_tls = direct_tls
    xmpp.enable_starttls = not direct_tls
    xmpp.register_plugin("xep_0004")  # data forms
    xmpp.register_plugin("xep_0050")  # ad-hoc commands
    return xmpp, url.hostname, url.port or (5223 if direct_tls else 5222)


def encrypted(xmpp: ClientXMPP) -> bool:
    """Whether the stream runs over TLS (direct TLS, or upgraded with STARTTLS)."""
    return "starttls" in xmpp.features or xmpp.enable_direct_tls


async def log_in(xmpp: ClientXMPP, host: str, port: int, *, insecure: bool) -> None:
    """Step 1: connect and wait for the session (or the reason there is none)."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[None] = loop.create_future()

    def settle(error: str | None):
        def handler(event: object) -> None:
            if outcome.done():
                return
            if error is None:
                outcome.set_result(None)
            else:
                outcome.set_exception(Failure(f"{error} ({event})" if event else error))

        return handler

    def auth_failed(_event: object) -> None:
        if outcome.done():
            return
        if not encrypted(xmpp) and not insecure:
            reason = (
                "the connection is not encrypted (the server offered no STARTTLS); "
                "use xmpps:// or, for a local test server, --insecure 1"
            )
        else:
            reason = (
                f"authentication failed ({failures[-1] if failures else 'no usable mechanism'})"
            )
        outcome.set_exception(Failure(reason))

    failures: list[str] = []  # the server's SASL failure conditions, e.g. not-authorized
    xmpp.add_event_handler("failed_auth", lambda failure: failures.append(failure["condition"]))
    xmpp.add_event_handler("failed_all_auth", auth_failed)
    xmpp.add_event_handler("session_start", settle(None))
    xmpp.add_event_handler("connection_failed", settle("connection failed"))
    xmpp.add_event_handler("stream_error", settle("stream error"))
    xmpp.add_event_handler("disconnected", settle("disconnected before the session started"))
    xmpp.connect(host, port)
    try:
        await asyncio.wait_for(outcome, TIMEOUT)
    except BaseException as exc:
        # No session: stop slixmpp's background reconnect attempts and the connection.
        xmpp.cancel_connection_attempt()
        with contextlib.suppress(Exception):
            xmpp.abort()
        if isinstance(exc, TimeoutError):
            raise Failure(f"no session within {TIMEOUT:.0f} s") from None
        raise


async def register_push(xmpp: ClientXMPP, opts: dict[str, str]) -> dict[str, str]:
    """Step 2: execute ``register-push-fcm``; returns ``jid``, ``node`` and ``secret``."""
    adhoc = xmpp.plugin["xep_0050"]

    # 2a. Start the command; ofnotify answers with the form to fill in:
    #   <iq type='set' to='push.example.com'>
    #     <command xmlns='http://jabber.org/protocol/commands'
    #              node='register-push-fcm' action='execute'/>
    #   </iq>
    #   -> <command status='executing' sessionid='S'> <x type='form'> token, device-id, muc
    reply = await adhoc.send_command(opts["component"], "register-push-fcm", timeout=TIMEOUT)
    started = reply["command"]
    if started["status"] != "executing":
        raise Failure(f"register-push-fcm: expected a form, got status {started['status']!r}")

    # 2b. Submit the form in that session:
    #   <command node='register-push-fcm' sessionid='S' action='complete'>
    #     <x xmlns='jabber:x:data' type='submit'> token, device-id, (muc) </x>
    #   </command>
    #   -> <command status='completed'> <x type='result'> jid, node, secret
    form = Form()
    form["type"] = "submit"
    form.add_field(var="token", value=opts["token"])
    form.add_field(var="device-id", value=opts["device-id"])
    if opts["muc"]:
        form.add_field(var="muc", value=opts["muc"])
    reply = await adhoc.send_command(
        opts["component"],
        "register-push-fcm",
        action="complete",
        payload=form,
        sessionid=started["sessionid"],
        timeout=TIMEOUT,
    )
    done = reply["command"]
    if done["status"] != "completed":
        raise Failure(f"register-push-fcm ended with status {done['status']!r}")
    values = {}
    for item in done["substanzas"]:
        if isinstance(item, Form):
            for var, field in item.get_fields().items():
                values[var] = str(field.get_value(convert=False) or "")
    for name in ("jid", "node", "secret"):
        if not values.get(name):
            raise Failure(f"register-push-fcm result has no {name!r}")
    return values


async def enable_push(xmpp: ClientXMPP, jid: str, node: str, secret: str) -> None:
    """Step 3: tell the account's own server to publish to that node with that secret.

    <iq type='set'>                        (no 'to': the account's own server)
      <enable xmlns='urn:xmpp:push:0' jid='push.example.com' node='NODE'>
        <x xmlns='jabber:x:data' type='submit'>
          <field var='FORM_TYPE'><value>...pubsub#publish-options</value></field>
          <field var='secret'><value>SECRET</value></field>
        </x>
      </enable>
    </iq>
    """
    options = Form()
    options["type"] = "submit"
    options.add_field(var="FORM_TYPE", ftype="hidden", value=PUBLISH_OPTIONS)
    options.add_field(var="secret", value=secret)
    enable = ET.Element(f"{{{PUSH_NS}}}enable", {"jid": jid, "node": node})
    enable.append(options.xml)
    await xmpp.make_iq_set(enable).send(timeout=TIMEOUT)


async def main(argv: list[str] | None = None) -> int:
    opts = read_options(argv)
    # slixmpp reports some problems only through logging (e.g. "No appropriate login
    # method."); show warnings on stderr. DEBUG would print every stanza, the secret too.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        xmpp, host, port = make_client(opts)
        await log_in(xmpp, host, port, insecure=opts["insecure"] == "1")
        print(f"logged in as {xmpp.boundjid}", file=sys.stderr)
        try:
            registration = await register_push(xmpp, opts)
            await enable_push(
                xmpp, registration["jid"], registration["node"], registration["secret"]
            )
            print(f"push enabled on {registration['jid']}", file=sys.stderr)
            # The node identifies this registration; never print or log the secret.
            print(registration["node"])
        finally:
            # Step 4: close the stream cleanly, so the server ends the session at once and
            # messages that arrive from now on are stored offline and pushed.
            await xmpp.disconnect(wait=TIMEOUT)
    except IqError as exc:
        error = exc.iq["error"]
        text = f": {error['text']}" if error["text"] else ""
        print(f"register_push: error reply [{error['condition']}]{text}", file=sys.stderr)
        return 1
    except IqTimeout:
        print(f"register_push: no reply within {TIMEOUT:.0f} s", file=sys.stderr)
        return 1
    except Failure as exc:
        print(f"register_push: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
