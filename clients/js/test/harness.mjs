// What the tests run against: a real `taxi-tornado serve` in a subprocess, users made
// over its HTTP API, and a TCP proxy between client and server that the test controls.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, openSync, closeSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";

import { TaxiClient } from "../dist/index.js";

/** CI runs the tests inside its own virtualenv: the interpreter comes from TAXI_PYTHON. */
export const PYTHON = process.env.TAXI_PYTHON || "python3";
const SECRET = "js-client-tests-secret-key-0123456789abcdef";

export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll `check` until it returns something truthy, or fail after `timeout` ms. */
export async function until(check, what, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/**
 * Start `python -m taxi_tornado serve` with TAXI_* variables `env` on a free port; the
 * returned object's stop() ends it and removes its data directory.
 */
export async function startServer(env = {}) {
  const dir = mkdtempSync(join(tmpdir(), "taxi-js-"));
  const port = await freePort();
  const logPath = join(dir, "server.log");
  const log = openSync(logPath, "w");
  const child = spawn(PYTHON, ["-m", "taxi_tornado", "serve"], {
    cwd: dir,
    stdio: ["ignore", log, log],
    env: {
      ...process.env,
      TAXI_DATA_DIR: join(dir, "data"),
      TAXI_SERVER_PORT: String(port),
      TAXI_AUTH_SECRET_KEY: SECRET,
      TAXI_LIMITS_AUTH_RATE: "0",
      TAXI_LIMITS_TRIP_REQUESTS: "0",
      TAXI_LIMITS_TRIPS_PER_RIDER: "0",
      TAXI_LOG_LEVEL: "warning",
      ...env,
    },
  });
  closeSync(log);
  let exited = null;
  child.on("exit", (code) => (exited = code));
  const base = `http://127.0.0.1:${port}`;
  const server = {
    port,
    base,
    url: `ws://127.0.0.1:${port}/taxi/`,
    log: () => readFileSync(logPath, "utf8"),
    async stop() {
      if (exited === null) {
        const gone = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGTERM");
        await Promise.race([gone, sleep(5_000)]);
        if (exited === null) child.kill("SIGKILL");
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  await until(async () => {
    if (exited !== null) throw new Error(`server exited ${exited}:\n${server.log()}`);
    try {
      return (await fetch(`${base}/healthz`)).ok;
    } catch {
      return false;
    }
  }, "the server to answer /healthz", 20_000);
  return server;
}

async function post(url, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(url, { method: "POST", headers, body: JSON.stringify(body) });
  const json = await response.json();
  if (!response.ok) throw new Error(`${url}: ${response.status} ${JSON.stringify(json)}`);
  return json;
}

let users = 0;

/**
 * Sign up and log in a user of `group`: `{id, access, refresh, getToken, trips}`, where
 * getToken() buys a new access token with the refresh token and trips() lists the
 * user's trips over HTTP.
 */
export async function makeUser(server, group) {
  const username = `${group}${process.pid}x${++users}`;
  const password = "a-long-password-1";
  const user = await post(`${server.base}/api/sign_up/`, {
    username, password1: password, password2: password, first_name: "T", last_name: "T", group,
  });
  const { access, refresh } = await post(`${server.base}/api/log_in/`, { username, password });
  return {
    id: user.id,
    access,
    refresh,
    getToken: async () => (await post(`${server.base}/api/token/refresh/`, { refresh })).access,
    async trips() {
      const response = await fetch(`${server.base}/api/trip/`, { headers: { Authorization: `Bearer ${access}` } });
      return response.json();
    },
  };
}

/** A TaxiClient for `user` on `url` (the server's, or a proxy's), with ws as its socket. */
export function clientFor(user, url, options = {}) {
  return new TaxiClient({
    url,
    getToken: () => user.getToken(),
    WebSocket,
    reconnect: { minDelay: 50, maxDelay: 300 },
    requestTimeout: 8_000,
    ...options,
  });
}

/**
 * A TCP proxy to 127.0.0.1:`target`. cut() drops every link at once, without a close
 * frame (as a tunnel does); blackhole("down") swallows what the server sends and
 * blackhole("up") what the client sends, on the links open now and later, until
 * heal(); refuse(true) drops every new link as soon as it comes.
 */
export async function startProxy(target) {
  const links = new Set();
  const state = { down: false, up: false, refuse: false, accepted: 0 };
  const server = net.createServer((client) => {
    state.accepted++;
    if (state.refuse) {
      client.destroy();
      return;
    }
    const upstream = net.connect(target, "127.0.0.1");
    const link = { client, upstream };
    links.add(link);
    const end = () => {
      links.delete(link);
      client.destroy();
      upstream.destroy();
    };
    client.on("data", (chunk) => state.up || upstream.write(chunk));
    upstream.on("data", (chunk) => state.down || client.write(chunk));
    for (const socket of [client, upstream]) {
      socket.on("error", end);
      socket.on("close", end);
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = server.address().port;
  return {
    url: `ws://127.0.0.1:${port}/taxi/`,
    get accepted() {
      return state.accepted;
    },
    get open() {
      return links.size;
    },
    cut() {
      for (const { client, upstream } of links) {
        client.resetAndDestroy();
        upstream.destroy();
      }
      links.clear();
    },
    blackhole(direction) {
      state[direction] = true;
    },
    heal() {
      state.down = state.up = false;
    },
    refuse(on) {
      state.refuse = on;
    },
    close() {
      this.cut();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Resolves with the next value `client` emits for `type` that satisfies `check`. */
export function next(client, type, check = () => true, timeout = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${type} within ${timeout} ms`));
    }, timeout);
    const off = client.on(type, (data, frame) => {
      if (!check(data, frame)) return;
      clearTimeout(timer);
      off();
      resolve(data);
    });
  });
}
