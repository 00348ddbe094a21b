#!/usr/bin/env node
// Register an FCM token with ofnotify and enable XEP-0357 push for an account.
//
// What a mobile client does after it obtained (or refreshed) its FCM token:
//   1. log in to its own XMPP server as the user;
//   2. execute the XEP-0050 ad-hoc command `register-push-fcm` on the ofnotify
//      component, submitting `token` and `device-id`; the result form holds the
//      app server `jid`, the push `node` and a `secret`;
//   3. send <enable xmlns='urn:xmpp:push:0'/> with that jid and node and the secret in a
//      publish-options form to its own server, which from then on publishes to ofnotify
//      whenever a message arrives while no client of the account is online;
//   4. log out.
//
// Usage (every option also has an environment variable; prefer it for the password):
//
//   cd docs/clients && npm ci
//   XMPP_PASSWORD=secret node register-push.js \
//     --service xmpp://127.0.0.1:5222 --domain example.com --username jenny \
//     --component push.example.com --token "$FCM_TOKEN" --device-id "$DEVICE_ID"
//
// On success the push node is the only line printed on stdout (diagnostics go to
// stderr) and the exit status is 0; any failure exits with status 1.

import { parseArgs } from "node:util";

import { client, xml } from "@xmpp/client";

const NS_COMMANDS = "http://jabber.org/protocol/commands";
const NS_DATA = "jabber:x:data";
const NS_PUSH = "urn:xmpp:push:0";
const PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options";
const TIMEOUT_MS = 15_000;

// name -> [environment variable, required?]
const OPTIONS = {
  service: ["XMPP_SERVICE", true], // xmpp://host:port (STARTTLS if offered) or xmpps://host:port
  domain: ["XMPP_DOMAIN", true], // the account's domain, e.g. example.com
  username: ["XMPP_USERNAME", true], // the local part: jenny for jenny@example.com
  password: ["XMPP_PASSWORD", true],
  resource: ["XMPP_RESOURCE", false], // empty: the server assigns one
  component: ["OFNOTIFY_JID", true], // ofnotify's component JID, e.g. push.example.com
  token: ["FCM_TOKEN", true], // from FirebaseMessaging.getToken() on the phone
  "device-id": ["DEVICE_ID", true], // stable per installation, e.g. Settings.Secure.ANDROID_ID
  muc: ["PUSH_MUC", false], // optional: register for one group chat (bare room JID)
  insecure: ["XMPP_INSECURE", false], // "1": log in without TLS (local test servers only)
};

function readOptions() {
  const { values } = parseArgs({
    options: Object.fromEntries(
      Object.keys(OPTIONS).map((name) => [name, { type: "string" }]),
    ),
    strict: true,
  });
  const options = {};
  const missing = [];
  for (const [name, [env, required]] of Object.entries(OPTIONS)) {
    options[name] = values[name] ?? process.env[env] ?? "";
    if (required && !options[name]) missing.push(`--${name} (or ${env})`);
  }
  if (missing.length > 0) {
    throw new Error(`missing ${missing.join(", ")}`);
  }
  return options;
}

// A <field var='...'><value>...</value></field> of a data form.
function field(name, value) {
  return xml("field", { var: name }, xml("value", {}, value));
}

// Values of a data form's fields by name (first value of each).
function formValues(form) {
  const values = {};
  for (const f of form?.getChildren("field") ?? []) {
    values[f.attrs.var] = f.getChildText("value") ?? "";
  }
  return values;
}

// Picks the SASL mechanism (passed to client() as `credentials`). Left alone,
// @xmpp/client authenticates over an unencrypted xmpp:// stream whenever the server lets
// it: it merely avoids PLAIN there (SCRAM-SHA-1 is taken; a server that offers only PLAIN
// fails with "SASL: Mechanism undefined not found"). Here credentials never leave the
// machine unencrypted unless --insecure 1 says so; then PLAIN is acceptable as well.
function chooseMechanism(credentials, insecure) {
  return async (authenticate, mechanisms, _fast, entity) => {
    if (!entity.isSecure() && !insecure) {
      throw new Error(
        "the connection is not encrypted (the server offered no STARTTLS); " +
          "use xmpps:// or, for a local test server, --insecure 1",
      );
    }
    // `mechanisms`: offered by the server, in the library's order of preference
    // (SCRAM-SHA-1 before PLAIN).
    await authenticate(credentials, mechanisms[0]);
  };
}

// Step 2: execute `register-push-fcm`, returning { jid, node, secret }.
async function registerPush(xmpp, opts) {
  const command = (attrs, ...children) =>
    xml("command", { xmlns: NS_COMMANDS, node: "register-push-fcm", ...attrs }, ...children);

  // 2a. Start the command; ofnotify answers with the form to fill in:
  //   <iq type='set' to='push.example.com'>
  //     <command xmlns='http://jabber.org/protocol/commands'
  //              node='register-push-fcm' action='execute'/>
  //   </iq>
  //   → <command status='executing' sessionid='S'> <x type='form'> token, device-id, muc
  const started = await xmpp.iqCaller.set(
    command({ action: "execute" }),
    opts.component,
    TIMEOUT_MS,
  );
  if (started.attrs.status !== "executing") {
    throw new Error(`register-push-fcm: expected a form, got status '${started.attrs.status}'`);
  }

  // 2b. Submit the form in that session:
  //   <command node='register-push-fcm' sessionid='S' action='complete'>
  //     <x xmlns='jabber:x:data' type='submit'> token, device-id, (muc) </x>
  //   </command>
  //   → <command status='completed'> <x type='result'> jid, node, secret
  const fields = [field("token", opts.token), field("device-id", opts["device-id"])];
  if (opts.muc) fields.push(field("muc", opts.muc));
  const done = await xmpp.iqCaller.set(
    command(
      { action: "complete", sessionid: started.attrs.sessionid },
      xml("x", { xmlns: NS_DATA, type: "submit" }, ...fields),
    ),
    opts.component,
    TIMEOUT_MS,
  );
  if (done.attrs.status !== "completed") {
    throw new Error(`register-push-fcm ended with status '${done.attrs.status}'`);
  }
  const result = formValues(done.getChild("x", NS_DATA));
  for (const name of ["jid", "node", "secret"]) {
    if (!result[name]) throw new Error(`register-push-fcm result has no '${name}'`);
  }
  return result;
}

// Step 3: tell the user's own server to publish to that node with that secret.
async function enablePush(xmpp, { jid, node, secret }) {
  //   <iq type='set'>                       (no 'to': the account's own server)
  //     <enable xmlns='urn:xmpp:push:0' jid='push.example.com' node='NODE'>
  //       <x xmlns='jabber:x:data' type='submit'>
  //         <field var='FORM_TYPE'><value>…pubsub#publish-options</value></field>
  //         <field var='secret'><value>SECRET</value></field>
  //       </x>
  //     </enable>
  //   </iq>
  await xmpp.iqCaller.set(
    xml(
      "enable",
      { xmlns: NS_PUSH, jid, node },
      xml(
        "x",
        { xmlns: NS_DATA, type: "submit" },
        field("FORM_TYPE", PUBLISH_OPTIONS),
        field("secret", secret),
      ),
    ),
    undefined,
    TIMEOUT_MS,
  );
}

async function main() {
  // @xmpp/client puts no time limit on the TCP connect itself: bound the whole run.
  setTimeout(() => {
    console.error(`register-push: not done after ${(4 * TIMEOUT_MS) / 1000} s`);
    process.exit(1);
  }, 4 * TIMEOUT_MS).unref();

  const opts = readOptions();
  const credentials = { username: opts.username, password: opts.password };

  // Step 1: log in. `credentials` as a function lets us choose the SASL mechanism.
  const xmpp = client({
    service: opts.service,
    domain: opts.domain,
    resource: opts.resource || undefined, // undefined: the server assigns one
    credentials: chooseMechanism(credentials, opts.insecure === "1"),
    timeout: TIMEOUT_MS, // for the stream to open, STARTTLS and closing (default 2 s)
  });
  // A one-shot tool: no automatic reconnects, which would hide a failed login.
  xmpp.reconnect.stop();
  // Errors during login also reject xmpp.start() and are reported once, below; later
  // ones (a broken connection, say) would otherwise only surface as a request timeout.
  xmpp.on("error", (err) => {
    if (xmpp.status === "online") console.error(`xmpp error: ${err.message || err.name || err}`);
  });

  const address = await xmpp.start();
  console.error(`logged in as ${address}`);
  try {
    const registration = await registerPush(xmpp, opts);
    await enablePush(xmpp, registration);
    console.error(`push enabled on ${registration.jid}`);
    // The node identifies this registration; never print or log the secret. (Waiting for
    // the write matters where pipes are asynchronous, e.g. macOS: we exit right after.)
    await new Promise((resolve) => process.stdout.write(`${registration.node}\n`, resolve));
  } finally {
    // Step 4: close the stream cleanly, so the server ends the session at once and
    // messages that arrive from now on are stored offline and pushed.
    await xmpp.stop();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    // Error replies and SASL failures read "condition - text", e.g. "bad-request - ...".
    console.error(`register-push: ${err.message || err.name || err}`);
    process.exit(1);
  },
);
