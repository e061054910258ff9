// Compiled, never run (`npm test` checks it with tsc): the published declarations
// accept what CLIENTS.md shows, with Node's `ws` as the WebSocket.
import WebSocket from "ws";

import { TaxiClient, TaxiError, type ClientState, type Frame } from "../dist/index.js";

const client = new TaxiClient({
  url: "ws://127.0.0.1:8000/taxi/",
  getToken: async () => "token",
  WebSocket,
  reconnect: { minDelay: 500, maxDelay: 20000 },
  requestTimeout: 10000,
});

const off: () => void = client.on("state", (state: ClientState) => void state);
off();
client.on("trip.updated", (data, frame: Frame) => void [data, frame.pos?.offset]);
client.on("resumed", (data) => {
  for (const [group, { recovered, missed }] of Object.entries(data.groups)) void [group, recovered, missed];
});
client.on("disconnect", ({ code, reason }) => void [code.toFixed(), reason.trim()]);

async function main(): Promise<void> {
  await client.connect();
  const trip = await client.request("trip.request", { pick_up_address: "A", drop_off_address: "B" });
  void trip;
  await client.request("some.plugin.type", { anything: 1 }, { timeout: 500 });
  try {
    await client.request("trip.cancel", { id: "x" });
  } catch (error) {
    if (error instanceof TaxiError) void [error.code, error.detail, error.errors["field"]?.[0]];
  }
  const state: ClientState = client.state;
  void state;
  client.close();
}

void main;

// The generated types hold: known types take and give their declared data.
async function typed(): Promise<void> {
  const trip = await client.request("trip.request", { pick_up_address: "A", drop_off_address: "B" });
  const status: "REQUESTED" | "STARTED" | "IN_PROGRESS" | "COMPLETED" | "CANCELED" = trip.status;
  void status;
  // @ts-expect-error drop_off_address is required
  await client.request("trip.request", { pick_up_address: "A" });
  client.on("trip.updated", (data) => void data.driver?.username);
  client.on("trip.offer", (data) => void data.distance_m.toFixed());
  client.send("driver.location", { lat: 1, lng: 2 });
  // @ts-expect-error lat must be a number
  client.send("driver.location", { lat: "1", lng: 2 });
}

void typed;
