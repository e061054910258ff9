// The same dist/ in Debian's Chromium: a page imports it, connects, requests a trip and
// hears a driver claim it. Never downloads a browser: /usr/bin/chromium or nothing.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { join, normalize } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { clientFor, freePort, makeUser, startServer } from "./harness.mjs";

const CHROMIUM = process.env.TAXI_CHROMIUM || "/usr/bin/chromium";
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
  "--disable-component-update", "--disable-sync"];
const DIST = fileURLToPath(new URL("../dist/", import.meta.url));
const PAGE = "<!doctype html><meta charset=utf-8><title>taxi-tornado-client</title>";

let server;
let pages;
let origin;

/** Serves the page at / and the built package under /dist/. */
async function servePackage() {
  const port = await freePort();
  const http = createServer((request, response) => {
    const path = new URL(request.url, "http://x").pathname;
    if (path === "/") {
      response.writeHead(200, { "Content-Type": "text/html" });
      return response.end(PAGE);
    }
    const file = normalize(join(DIST, path.replace(/^\/dist\//, "")));
    if (!path.startsWith("/dist/") || !file.startsWith(DIST) || !existsSync(file)) {
      response.writeHead(404);
      return response.end();
    }
    response.writeHead(200, { "Content-Type": "text/javascript" });
    response.end(readFileSync(file));
  });
  await new Promise((resolve) => http.listen(port, "127.0.0.1", resolve));
  return http;
}

before(async () => {
  pages = await servePackage();
  origin = `http://127.0.0.1:${pages.address().port}`;
  server = await startServer({ TAXI_SERVER_ALLOWED_ORIGINS: origin });
});

after(async () => {
  if (pages) await new Promise((resolve) => pages.close(resolve));
  await server?.stop();
});

test("in Chromium the package connects, requests and receives an event", { timeout: 30_000 }, async () => {
  const { chromium } = await import("playwright-core");
  const rider = await makeUser(server, "rider");
  const driver = clientFor(await makeUser(server, "driver"), server.url);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  try {
    await driver.connect();
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (error) => errors.push(String(error)));
    await page.goto(`${origin}/`);
    const trip = await page.evaluate(async ({ url, token }) => {
      const { TaxiClient } = await import("/dist/index.js");
      const client = new TaxiClient({ url, getToken: () => token });
      window.heard = [];
      client.on("trip.updated", (data, frame) => window.heard.push({ status: data.status, group: frame.pos.group }));
      await client.connect();
      window.client = client;
      return client.request("trip.request", { pick_up_address: "Browser", drop_off_address: "Airport" });
    }, { url: server.url, token: rider.access });
    assert.equal(trip.status, "REQUESTED");

    await driver.request("trip.update", { id: trip.id, status: "STARTED" });
    await page.waitForFunction(() => window.heard.length > 0, null, { timeout: 10_000 });
    const heard = await page.evaluate(() => {
      window.client.close();
      return window.heard;
    });
    assert.deepEqual(heard, [{ status: "STARTED", group: trip.id }]);
    assert.deepEqual(errors, []);
  } finally {
    driver.close();
    await browser.close();
  }
});

test("in Chromium a token with stray characters never reaches the WebSocket constructor, which would name it", { timeout: 30_000 }, async () => {
  const { chromium } = await import("playwright-core");
  const rider = await makeUser(server, "rider");
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
  try {
    const page = await browser.newPage();
    await page.goto(`${origin}/`);
    const seen = await page.evaluate(async ({ url, token }) => {
      const { TaxiClient } = await import("/dist/index.js");
      let raw = "";
      try {
        new WebSocket(url, ["taxi.v2", `bearer.${token}`]);
      } catch (error) {
        raw = String(error);
      }
      const client = new TaxiClient({ url, getToken: () => token, reconnect: { minDelay: 50, maxDelay: 200 } });
      const errors = [];
      client.on("error", (data) => errors.push(data));
      const refused = await client.connect().then(() => null, (error) => ({ code: error.code, detail: error.detail, text: String(error) }));
      await new Promise((resolve) => setTimeout(resolve, 400));
      return { raw, refused, errors, state: client.state };
    }, { url: server.url, token: `"${rider.access}"\n` });
    assert.ok(seen.raw.includes(rider.access), "the browser's own error names the token");
    assert.equal(seen.refused.code, "bad_token");
    const said = JSON.stringify([seen.refused, seen.errors]);
    assert.ok(!said.includes(rider.access) && !said.includes(rider.access.split(".")[2]));
    assert.deepEqual(seen.errors.map((error) => error.code), ["bad_token"]);
    assert.equal(seen.state, "disconnected");
  } finally {
    await browser.close();
  }
});
