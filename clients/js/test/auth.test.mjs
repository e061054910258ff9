// Tokens that expire every few seconds: the client refreshes on the live socket, and
// after a 4001 (its getToken held back) reconnects with a fresh token.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { clientFor, makeUser, next, sleep, startServer, until } from "./harness.mjs";

const TTL = 4; // seconds: long enough that a refresh halfway through a life (whole-second exp) has margin on a loaded machine
let server;

before(async () => {
  server = await startServer({ TAXI_AUTH_ACCESS_TTL: String(TTL), TAXI_AUTH_REFRESH_GRACE: "1", TAXI_AUTH_LEEWAY: "0" });
});

after(() => server?.stop());

const TRIP = { pick_up_address: "Station", drop_off_address: "Airport" };

test("the socket outlives several token expiries without a 4001", { timeout: 30_000 }, async () => {
  const rider = await makeUser(server, "rider");
  let tokens = 0;
  const client = clientFor(rider, server.url, { getToken: () => (tokens++, rider.getToken()) });
  const closes = [];
  client.on("disconnect", (data) => closes.push(data.code));
  const expired = [];
  client.on("auth.expired", (data) => expired.push(data));
  try {
    await client.connect();
    await sleep(TTL * 3 * 1000 + 500);
    assert.deepEqual(closes, [], "the socket never closed");
    assert.deepEqual(expired, [], "the server never had to say the token expired");
    assert.ok(tokens >= 4, `getToken called for the handshake and each refresh (${tokens})`);
    const trip = await client.request("trip.request", TRIP);
    assert.equal(trip.status, "REQUESTED");
  } finally {
    client.close();
  }
});

test("after a 4001 it reconnects with a new token", { timeout: 30_000 }, async () => {
  const rider = await makeUser(server, "rider");
  let release;
  const withheld = new Promise((resolve) => (release = resolve));
  let calls = 0;
  // The first token comes at once; every later one waits until the test releases it.
  const getToken = async () => (++calls === 1 ? rider.getToken() : withheld.then(() => rider.getToken()));
  const client = clientFor(rider, server.url, { getToken });
  try {
    await client.connect();
    const closed = await next(client, "disconnect", () => true, TTL * 1000 + 5_000);
    assert.equal(closed.code, 4001);
    await until(() => client.state === "connecting", "the client to dial again");
    await sleep(300);
    assert.equal(client.state, "connecting", "no socket opens before getToken() gives a token");
    release();
    await until(() => client.state === "connected", "the reconnect with a fresh token");
    const trip = await client.request("trip.request", TRIP);
    assert.equal(trip.status, "REQUESTED");
  } finally {
    client.close();
  }
});
