// Tokens that cannot work, and tokens kept out of what the client says: a token with a
// stray character (quotes from JSON, a newline from a file) never reaches the WebSocket
// constructor, whose error would name it; connect() rejects with bad_token instead.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { TaxiError } from "../dist/index.js";
import { redact } from "../dist/redact.js";
import { clientFor, makeUser, sleep, startProxy, startServer, until } from "./harness.mjs";

let server;
const cleanup = [];

before(async () => {
  server = await startServer();
});

after(async () => {
  for (const step of cleanup.reverse()) await step();
  await server?.stop();
});

/** A client of a new rider through a proxy of its own; `handed(token)` is what getToken gives. */
async function rider(handed) {
  const user = await makeUser(server, "rider");
  const proxy = await startProxy(server.port);
  const token = { value: handed(user.access) };
  const client = clientFor(user, proxy.url, { getToken: () => token.value });
  const errors = [];
  client.on("error", (data) => errors.push(data));
  cleanup.push(async () => {
    client.close();
    await proxy.close();
  });
  return { user, proxy, client, token, errors };
}

const signatureOf = (jwt) => jwt.split(".")[2];

function holdsNo(jwt, ...things) {
  const text = things.map((thing) => (typeof thing === "string" ? thing : JSON.stringify(thing))).join(" ");
  return !text.includes(jwt) && !text.includes(signatureOf(jwt));
}

test("a token with a trailing newline is trimmed and connects", { timeout: 20_000 }, async () => {
  const { client } = await rider((jwt) => `${jwt}\n`);
  await client.connect();
  assert.equal(await client.request("echo.message", 1), 1);
});

test("a quoted token with a trailing newline rejects connect() with bad_token, names no token, and dials nothing", { timeout: 20_000 }, async () => {
  const { user, proxy, client, token, errors } = await rider((jwt) => `"${jwt}"\n`);
  const states = [];
  client.on("state", (state) => states.push(state));
  const refused = await client.connect().then(
    () => assert.fail("connect() resolved"),
    (error) => error,
  );
  assert.ok(refused instanceof TaxiError);
  assert.equal(refused.code, "bad_token");
  assert.match(refused.detail, /position 0 of/);
  assert.ok(holdsNo(user.access, refused.detail, refused.message, String(refused), errors));
  assert.deepEqual(errors.map((error) => error.code), ["bad_token"]);
  await sleep(600); // twice the largest backoff: no dial, no second refusal
  assert.equal(proxy.accepted, 0);
  assert.equal(errors.length, 1);
  assert.deepEqual(states, ["connecting", "disconnected"]);

  token.value = user.access; // the app fixed its token: connect() starts over
  await client.connect();
  assert.equal(await client.request("echo.message", 2), 2);
});

test("a bad token after a session is reported, connect() rejects, and the client keeps trying until it mends", { timeout: 20_000 }, async () => {
  const { user, proxy, client, token, errors } = await rider((jwt) => jwt);
  await client.connect();
  token.value = `Bearer ${user.access}`;
  proxy.cut();
  await until(() => errors.length >= 2, "two refusals of the bad token");
  assert.deepEqual(new Set(errors.map((error) => error.code)), new Set(["bad_token"]));
  assert.ok(holdsNo(user.access, errors));
  const refused = await client.connect().catch((error) => error);
  assert.equal(refused.code, "bad_token");
  assert.equal(proxy.accepted, 1);
  token.value = user.access;
  await until(() => client.state === "connected", "the reconnect with a good token");
  assert.equal(await client.request("echo.message", 3), 3);
});

test("redact hides a subprotocol token, a JWT and a token field, and leaves host names", () => {
  const jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
  // Chromium's SyntaxError for a subprotocol it refuses.
  const browser = `SyntaxError: Failed to construct 'WebSocket': The subprotocol 'bearer."${jwt}"' is invalid.`;
  assert.equal(redact(browser), "SyntaxError: Failed to construct 'WebSocket': The subprotocol 'bearer.<redacted> is invalid.");
  assert.equal(redact(`multiple values: taxi.v2, bearer.${jwt}`), "multiple values: taxi.v2, bearer.<redacted>");
  assert.equal(redact(`Error: no (${jwt})`), "Error: no (<redacted>");
  assert.equal(redact(`{"token":"${jwt}"}`), '{"token":<redacted>}');
  assert.equal(redact("could not reach taxi.example.com"), "could not reach taxi.example.com");
  assert.equal(new TaxiError("forbidden", `not ${jwt}`).detail, "not <redacted>");
});
