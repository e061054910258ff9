// A rider's session through links that drop: replay, lost replies, the queue, timeouts
// and close(), against a real server behind a proxy the test controls.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { TaxiError } from "../dist/index.js";
import { clientFor, makeUser, next, sleep, startProxy, startServer, until } from "./harness.mjs";

let server;
const cleanup = [];

before(async () => {
  server = await startServer();
});

after(async () => {
  for (const step of cleanup.reverse()) await step();
  await server?.stop();
});

/** A connected client of a new user of `group`, on a proxy of its own when `proxied`. */
async function connected(group, proxied = true) {
  const user = await makeUser(server, group);
  const proxy = proxied ? await startProxy(server.port) : undefined;
  const client = clientFor(user, proxy ? proxy.url : server.url);
  cleanup.push(async () => {
    client.close();
    if (proxy) await proxy.close();
  });
  await client.connect();
  return { user, proxy, client };
}

const TRIP = { pick_up_address: "Station", drop_off_address: "Airport" };

test("events missed while the link was cut arrive once and in order, then live ones follow", { timeout: 30_000 }, async () => {
  const rider = await connected("rider");
  const driver = await connected("driver", false);
  const heard = [];
  rider.client.on("trip.updated", (data, frame) => heard.push([frame.pos?.offset, data.status]));
  rider.client.on("driver.location", (data, frame) => heard.push([frame.pos?.offset, `at ${data.lat}`]));
  const resumed = [];
  rider.client.on("resumed", (data) => resumed.push(data));

  const trip = await rider.client.request("trip.request", TRIP);
  await driver.client.request("trip.update", { id: trip.id, status: "STARTED" });
  await until(() => heard.length === 1, "the claim to reach the rider");

  rider.proxy.refuse(true);
  rider.proxy.cut();
  await until(() => rider.client.state !== "connected", "the rider to notice the cut");
  const locate = (lat) => assert.ok(driver.client.send("driver.location", { lat, lng: 0 }));
  for (const lat of [1, 2, 3]) locate(lat);
  await driver.client.request("trip.update", { id: trip.id, status: "IN_PROGRESS" });
  locate(4);
  await sleep(200);
  assert.equal(heard.length, 1, "nothing reached the rider while cut");

  rider.proxy.refuse(false);
  await next(rider.client, "resumed");
  await driver.client.request("trip.update", { id: trip.id, status: "COMPLETED" });
  await until(() => heard.length === 7, "every missed event and the live one", 5_000);
  await sleep(200);

  assert.deepEqual(heard.map(([, what]) => what),
    ["STARTED", "at 1", "at 2", "at 3", "IN_PROGRESS", "at 4", "COMPLETED"]);
  const offsets = heard.map(([offset]) => offset);
  assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b));
  assert.equal(new Set(offsets).size, offsets.length, "no event twice");
  const group = resumed[0].groups[trip.id];
  assert.deepEqual(group, { recovered: true, missed: 5 });
});

test("a trip.request whose reply was lost to a cut resolves after the reconnect with the one trip", { timeout: 30_000 }, async () => {
  const rider = await connected("rider");
  rider.proxy.blackhole("down");
  const reply = rider.client.request("trip.request", TRIP, { timeout: 8_000 });
  const [made] = await until(async () => {
    const trips = await rider.user.trips();
    return trips.length ? trips : null;
  }, "the server to make the trip");
  rider.proxy.cut();
  rider.proxy.heal();

  const trip = await reply;
  assert.equal(trip.id, made.id);
  const trips = await rider.user.trips();
  assert.deepEqual(trips.map((t) => t.id), [made.id], "exactly one trip on the server");
});

test("requests made while disconnected go out, in order, once the link is back", { timeout: 30_000 }, async () => {
  const rider = await connected("rider");
  rider.proxy.refuse(true);
  rider.proxy.cut();
  await until(() => rider.client.state !== "connected", "the rider to notice the cut");
  const first = rider.client.request("trip.request", { ...TRIP, pick_up_address: "first" });
  const second = rider.client.request("trip.request", { ...TRIP, pick_up_address: "second" });
  await sleep(150);
  assert.deepEqual(await rider.user.trips(), [], "nothing was sent while disconnected");

  rider.proxy.refuse(false);
  const [one, two] = await Promise.all([first, second]);
  assert.deepEqual([one.pick_up_address, two.pick_up_address], ["first", "second"]);
  const trips = await rider.user.trips();
  assert.deepEqual(trips.map((t) => t.id).sort(), [one.id, two.id].sort());
});

test("a request without a reply in time rejects with timeout", { timeout: 30_000 }, async () => {
  const rider = await connected("rider");
  rider.proxy.blackhole("down");
  const started = Date.now();
  await assert.rejects(rider.client.request("trip.request", TRIP, { timeout: 300 }),
    (error) => error instanceof TaxiError && error.code === "timeout");
  assert.ok(Date.now() - started >= 290);
});

test("an error frame rejects with the code, the detail and the field errors", { timeout: 30_000 }, async () => {
  const rider = await connected("rider", false);
  await assert.rejects(rider.client.request("trip.request", { pick_up_address: "" }), (error) => {
    assert.ok(error instanceof TaxiError);
    assert.equal(error.code, "invalid");
    assert.ok(error.detail);
    assert.ok(error.errors.drop_off_address, JSON.stringify(error.errors));
    return true;
  });
});

test("close() ends it: pending requests reject with closed and nothing reconnects", { timeout: 30_000 }, async () => {
  const rider = await connected("rider");
  rider.proxy.blackhole("down");
  const states = [];
  rider.client.on("state", (state) => states.push(state));
  const pending = rider.client.request("trip.request", TRIP);
  rider.client.close();
  await assert.rejects(pending, (error) => error instanceof TaxiError && error.code === "closed");
  await assert.rejects(rider.client.request("trip.request", TRIP), (error) => error.code === "closed");
  await assert.rejects(rider.client.connect(), (error) => error.code === "closed");
  const accepted = rider.proxy.accepted;
  await sleep(700);
  assert.equal(rider.proxy.accepted, accepted, "no new connection after close()");
  assert.deepEqual(states, ["closed"]);
  assert.equal(rider.client.state, "closed");
});

test("the token travels as a bearer. subprotocol beside taxi.v2, never in the URL", { timeout: 30_000 }, async () => {
  const { default: WebSocket } = await import("ws");
  const seen = [];
  class Spy extends WebSocket {
    constructor(url, protocols) {
      seen.push([url, protocols]);
      super(url, protocols);
    }
  }
  const user = await makeUser(server, "rider");
  const client = clientFor(user, server.url, { WebSocket: Spy });
  cleanup.push(() => client.close());
  await client.connect();
  assert.equal(seen.length, 1);
  const [url, protocols] = seen[0];
  assert.equal(url, server.url);
  assert.equal(protocols[0], "taxi.v2");
  assert.match(protocols[1], /^bearer\.ey/);
});
