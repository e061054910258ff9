import { backoff } from "./backoff.js";
import { TaxiError } from "./error.js";
import { Positions, type Frame } from "./positions.js";
import { KEYED_TYPES, type Events, type Replies, type Requests } from "./protocol.js";
import { redact, tokenProblem } from "./redact.js";
import { tokenExpiry } from "./token.js";

/** Where the client is: it moves between the first three by itself until `close()`. */
export type ClientState = "connecting" | "connected" | "disconnected" | "closed";

// Each platform types its events its own way; `any` lets all of them fit.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type SocketHandler = ((event: any) => void) | null;

/** The part of a WebSocket the client uses: browsers', React Native's and `ws`'s fit. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: SocketHandler;
  onmessage: SocketHandler;
  onclose: SocketHandler;
  onerror: SocketHandler;
}

export type WebSocketConstructor = new (url: string, protocols: string[]) => WebSocketLike;

export interface TaxiClientOptions {
  /** The socket endpoint, e.g. "wss://taxi.example.com/taxi/"; never with a token in it. */
  url: string;
  /** A valid access JWT: called before every connect and again before the token's exp. */
  getToken: () => string | Promise<string>;
  /** A WebSocket constructor; default globalThis.WebSocket (on Node 20 pass `ws`'s). */
  WebSocket?: WebSocketConstructor;
  /** Milliseconds: the first backoff ceiling, and the largest. */
  reconnect?: { minDelay?: number; maxDelay?: number };
  /** Milliseconds a request waits for its reply, from the `request()` call. */
  requestTimeout?: number;
  /** A plugin's keyed types, beside those the server's document marks (KEYED_TYPES). */
  keyedTypes?: string[];
}

/** The data of `session.resumed`: per group listed, whether its events were replayed. */
export interface Resumed {
  groups: Record<string, { recovered: boolean; missed: number }>;
}

/** The client's own events, beside every event type the server sends. */
export interface ClientEvents {
  state: ClientState;
  resumed: Resumed;
  /** A socket closed (not by `close()`); 1008 and 1009 mean the app sent what it must not. */
  disconnect: { code: number; reason: string };
  /**
   * Something failed without a request to reject: `getToken()` (`token_unavailable`, or
   * `bad_token` for a token that is not a JWT), a refresh, an error frame. No detail or
   * reason the client gives holds a token: anything shaped like one reads `<redacted>`.
   */
  error: { code: string; detail: string; errors?: Record<string, string[]> };
}

/** What listeners of `K` get: a client event's data, or an event's as the server declares it. */
export type EventData<K extends string> = K extends keyof ClientEvents ? ClientEvents[K] : K extends keyof Events ? Events[K] : unknown;
/** The whole frame for the server's events; nothing for the client's own. */
export type EventFrame<K extends string> = K extends keyof ClientEvents ? undefined : Frame;
/** The `data` a request of type `K` takes, and the `data` of its reply. */
export type RequestData<K extends string> = K extends keyof Requests ? Requests[K] : unknown;
export type ReplyData<K extends string> = K extends keyof Replies ? Replies[K] : unknown;

type Listener = (data: never, frame: never) => void;

interface Pending {
  /** Encoded once, so that a resend is the same frame with the same `key`. */
  frame: string;
  keyed: boolean;
  /** The socket it went out on; anything else means it still has to go. */
  socket: WebSocketLike | undefined;
  resolve(data: unknown): void;
  reject(error: TaxiError): void;
  timer: unknown;
}

const QUEUE_LIMIT = 100;
const REFRESH_MARGIN = 60_000;

/**
 * One logical session with a taxi_tornado server, kept alive over any number of sockets
 * (docs/protocol.md, "Sessions that survive a phone"): it reconnects with backoff, resumes
 * every group it heard from, keeps its token fresh on the live socket, and sends again
 * the keyed requests whose replies a dropped link took.
 */
export class TaxiClient {
  private readonly options: TaxiClientOptions;
  private readonly WS: WebSocketConstructor;
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly pending = new Map<number, Pending>();
  private readonly positions = new Positions();
  private readonly keyed: Set<string>;
  private current: ClientState = "disconnected";
  private socket: WebSocketLike | undefined; // the newest socket, open or opening
  private live: WebSocketLike | undefined; // the same, once open
  private token = "";
  private attempt = 0;
  private nextId = 1;
  private opened = false; // a socket has opened: every later one resumes
  private refreshing = false;
  private timer: unknown; // the wait before the next dial
  private refreshTimer: unknown;
  private waiters: Array<[() => void, (error: TaxiError) => void]> = [];

  constructor(options: TaxiClientOptions) {
    const WS = options.WebSocket || (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!WS) throw new TypeError("no WebSocket here: pass one as options.WebSocket (on Node 20, the ws package's)");
    this.options = options;
    this.WS = WS;
    this.keyed = new Set([...KEYED_TYPES, ...(options.keyedTypes || [])]);
  }

  get state(): ClientState {
    return this.current;
  }

  /**
   * Resolves once a socket is open. Called while the client waits to reconnect, it
   * dials at once: call it when the device's network comes back. Rejects with
   * TaxiError `bad_token` when getToken() gives a token that cannot work (not a JWT
   * once the whitespace around it is trimmed); before any socket opened, the client
   * then stops dialling until connect() is called again.
   */
  connect(): Promise<void> {
    if (this.current === "closed") return Promise.reject(closedError());
    if (this.live) return Promise.resolve();
    const opened = new Promise<void>((resolve, reject) => this.waiters.push([resolve, reject]));
    if (this.current === "disconnected") void this.dial();
    return opened;
  }

  /** Closes for good: no reconnect, and every request waiting rejects with `closed`. */
  close(): void {
    if (this.current === "closed") return;
    clearTimeout(this.timer);
    clearTimeout(this.refreshTimer);
    this.setState("closed");
    const socket = this.socket;
    this.socket = this.live = undefined;
    if (socket) socket.close(1000);
    for (const id of this.pending.keys()) this.settle(id, closedError());
    for (const [, reject] of this.waiters.splice(0)) reject(closedError());
  }

  /**
   * Listen to `type`: the client's own events (ClientEvents) or any event type the
   * server sends, typed from the server's schemas when it declares them (Events).
   */
  on<K extends string>(type: K, listener: (data: EventData<K>, frame: EventFrame<K>) => void): () => void;
  on(type: string, listener: Listener): () => void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => {
      set!.delete(listener);
    };
  }

  /**
   * Send `{type, data, id}` (and a fresh `key` for keyed types) and resolve with the
   * reply's data, or reject with a TaxiError. While no socket is open the request waits
   * in a queue of at most 100 and goes out once one is.
   */
  request<K extends string>(type: K, data: RequestData<K>, options?: { timeout?: number }): Promise<ReplyData<K>>;
  request(type: string, data?: unknown, options: { timeout?: number } = {}): Promise<unknown> {
    const timeout = options.timeout ?? this.options.requestTimeout ?? 10_000;
    return new Promise((resolve, reject) => this.call(type, data, timeout, resolve, reject));
  }

  /**
   * Send a frame that gets no reply (`driver.location`) on the open socket; false, and
   * nothing sent, while there is none: a stale position is worth less than none. An
   * error frame it causes reaches the `error` listeners.
   */
  send<K extends string>(type: K, data: RequestData<K>): boolean {
    if (!this.live) return false;
    this.live.send(JSON.stringify({ type, data }));
    return true;
  }

  private call(type: string, data: unknown, timeout: number, resolve: (data: unknown) => void, reject: (error: TaxiError) => void): void {
    if (this.current === "closed") return reject(closedError());
    if (!this.live && this.pending.size >= QUEUE_LIMIT) {
      return reject(new TaxiError("queue_full", `${QUEUE_LIMIT} requests already wait for a connection`));
    }
    const id = this.nextId++;
    const keyed = this.keyed.has(type);
    const frame: Record<string, unknown> = { type, data, id };
    if (keyed) frame.key = newKey();
    const timer = setTimeout(() => this.settle(id, new TaxiError("timeout", `no reply to ${type} within ${timeout} ms`)), timeout);
    const request: Pending = { frame: JSON.stringify(frame), keyed, socket: undefined, resolve, reject, timer };
    this.pending.set(id, request);
    this.transmit(request);
  }

  private transmit(request: Pending): void {
    const live = this.live;
    if (!live || request.socket === live) return;
    request.socket = live;
    live.send(request.frame);
  }

  private settle(id: number, error: TaxiError | undefined, data?: unknown): void {
    const request = this.pending.get(id);
    if (!request) return;
    this.pending.delete(id);
    clearTimeout(request.timer);
    if (error) request.reject(error);
    else request.resolve(data);
  }

  private async dial(): Promise<void> {
    clearTimeout(this.timer);
    this.setState("connecting");
    let token: string;
    try {
      token = await this.fetchToken();
    } catch (error) {
      if (this.current !== "connecting") return; // closed meanwhile
      if (error instanceof TaxiError) return this.refuseToken(error);
      this.emitError("token_unavailable", String(error));
      return this.retry(0);
    }
    if (this.current !== "connecting") return; // closed meanwhile
    let socket: WebSocketLike;
    try {
      // The token travels as a subprotocol, never in the URL (access logs keep URLs).
      socket = new this.WS(this.options.url, ["taxi.v2", `bearer.${token}`]);
    } catch (error) {
      // A browser's SyntaxError names the subprotocols: redacted like every detail.
      this.emitError("connect_failed", String(error));
      return this.retry(0);
    }
    this.socket = socket;
    this.token = token;
    socket.onopen = () => this.onOpen(socket);
    socket.onmessage = (event) => {
      if (socket === this.live) this.onFrame(event.data);
    };
    socket.onclose = (event) => this.onClose(socket, event.code, String(event.reason || ""));
    socket.onerror = () => {}; // a close follows
  }

  /** The token from getToken(), trimmed; TaxiError `bad_token` when it cannot work. */
  private async fetchToken(): Promise<string> {
    const token = String(await this.options.getToken()).trim();
    const problem = tokenProblem(token);
    if (problem) throw new TaxiError("bad_token", problem);
    return token;
  }

  /**
   * A token that cannot work: connect() rejects; the client goes on trying (getToken()
   * may mend) only when it has a session to keep, else it waits for the next connect().
   */
  private refuseToken(error: TaxiError): void {
    this.emitError(error.code, error.detail);
    for (const [, reject] of this.waiters.splice(0)) reject(error);
    if (this.opened) return this.retry(0);
    this.setState("disconnected");
  }

  private onOpen(socket: WebSocketLike): void {
    if (socket !== this.socket) return;
    this.live = socket;
    this.attempt = 0;
    // The resume goes first: a live event that beat it could otherwise pass older ones.
    if (this.opened) this.resume();
    this.opened = true;
    for (const request of this.pending.values()) this.transmit(request);
    this.scheduleRefresh(0);
    this.setState("connected");
    for (const [resolve] of this.waiters.splice(0)) resolve();
  }

  private resume(): void {
    const positions = this.positions.resume();
    const release = () => this.positions.release((frame) => this.deliver(frame));
    const resumed = (data: unknown) => {
      release();
      this.emit("resumed", data);
    };
    this.call("session.resume", { positions }, this.options.requestTimeout ?? 10_000, resumed, release);
  }

  private onFrame(raw: unknown): void {
    let frame: Frame;
    try {
      frame = JSON.parse(String(raw));
    } catch {
      return;
    }
    if (!frame || typeof frame.type !== "string") return;
    if (frame.id != null && !frame.pos) return this.onReply(frame);
    if (frame.type === "auth.expired") void this.refresh();
    this.positions.accept(frame, (event) => this.deliver(event));
  }

  /** A frame with an `id` answers one of ours; one nobody waits for any more is dropped. */
  private onReply(frame: Frame): void {
    const id = Number(frame.id);
    const request = this.pending.get(id);
    if (!request) return;
    if (frame.type !== "error") return this.settle(id, undefined, frame.data);
    const data = (frame.data || {}) as { code?: string; detail?: string; errors?: Record<string, string[]> };
    if (data.code === "in_progress" && request.keyed) {
      // The first copy (sent before the link dropped) is still being handled: ask again.
      request.socket = undefined;
      setTimeout(() => this.pending.get(id) === request && this.transmit(request), 250);
      return;
    }
    this.settle(id, new TaxiError(data.code || "error", data.detail || "", data.errors));
  }

  private deliver(frame: Frame): void {
    this.emit(frame.type, frame.data, frame);
  }

  private onClose(socket: WebSocketLike, code: number, reason: string): void {
    if (socket !== this.socket) return;
    this.socket = this.live = undefined;
    clearTimeout(this.refreshTimer);
    this.refreshing = false;
    this.positions.drop();
    for (const [id, request] of this.pending) {
      if (!request.socket) continue;
      if (code === 1009) {
        this.settle(id, new TaxiError("too_big", "the server closed the link over a frame larger than it takes (1009); not sent again"));
      } else if (!request.keyed) {
        this.settle(id, new TaxiError("disconnected", "the link dropped before the reply; the request may or may not have been handled"));
      }
    }
    this.emit("disconnect", { code, reason: redact(reason) });
    if (this.current !== "closed") this.retry(code);
  }

  /**
   * Wait, then dial again. 4001 (the token expired) dials at once, with a token fetched
   * first; 1008 and 1009 (the app sent what it must not) wait at least half of maxDelay.
   */
  private retry(code: number): void {
    this.setState("disconnected");
    const { minDelay = 500, maxDelay = 20_000 } = this.options.reconnect || {};
    let delay = backoff(this.attempt++, minDelay, maxDelay);
    if (code === 4001) delay = 0;
    if (code === 1008 || code === 1009) delay = maxDelay / 2 + delay / 2;
    this.timer = setTimeout(() => void this.dial(), delay);
  }

  /** Refresh before the token's exp: a minute before, or halfway through a shorter life. */
  private scheduleRefresh(atLeast: number): void {
    clearTimeout(this.refreshTimer);
    const exp = tokenExpiry(this.token);
    if (!this.live || exp === undefined) return;
    const left = exp - Date.now();
    const delay = Math.max(atLeast, left - Math.min(REFRESH_MARGIN, left / 2));
    this.refreshTimer = setTimeout(() => void this.refresh(), delay);
  }

  private async refresh(): Promise<void> {
    const socket = this.live;
    if (!socket || this.refreshing) return;
    this.refreshing = true;
    clearTimeout(this.refreshTimer);
    let token: string;
    try {
      token = await this.fetchToken();
    } catch (error) {
      this.refreshing = false;
      if (error instanceof TaxiError) this.emitError(error.code, error.detail);
      else this.emitError("token_unavailable", String(error));
      return this.scheduleRefresh(5_000);
    }
    if (socket !== this.live) return;
    const done = (error?: TaxiError) => {
      if (socket !== this.live) return;
      this.refreshing = false;
      if (error) this.emitError(error.code, error.detail);
      else this.token = token;
      this.scheduleRefresh(error ? 5_000 : 1_000);
    };
    this.call("auth.refresh", { token }, this.options.requestTimeout ?? 10_000, () => done(), done);
  }

  private emitError(code: string, detail: string): void {
    this.emit("error", { code, detail: redact(detail) });
  }

  private setState(state: ClientState): void {
    if (state === this.current) return;
    this.current = state;
    this.emit("state", state);
  }

  private emit(type: string, data: unknown, frame?: Frame): void {
    const set = this.listeners.get(type);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        (listener as (data: unknown, frame?: Frame) => void)(data, frame);
      } catch (error) {
        // One failing listener must not stop the others nor the client: report it.
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}

function closedError(): TaxiError {
  return new TaxiError("closed", "the client was closed");
}

/** A fresh idempotency key: a UUID where the platform has one, else 128 random bits. */
function newKey(): string {
  const crypto = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (crypto && crypto.randomUUID) return crypto.randomUUID();
  let key = "";
  for (let i = 0; i < 32; i++) key += ((Math.random() * 16) | 0).toString(16);
  return key;
}
