// The page's live link: a v2 socket on the server's /taxi/ endpoint. A staff connection
// joins the `admin` group, whose events all have types starting with `admin.`:
// `admin.stats` (the overview, every second) and `admin.trip` (a trip that changed).
// A dropped socket is opened again with a growing delay; so is one an operator closed.
// The access token travels as a `bearer.<token>` subprotocol beside `taxi.v2`, never in
// the URL: a URL ends up in proxies' logs (nginx logs it with every failed upgrade), and
// a staff token is the most privileged token there is. The server selects `taxi.v2`
// and never echoes the token.

const SUBPROTOCOL = "taxi.v2";
const BEARER = "bearer.";
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 10000;

export class LiveLink {
  // session: api.js Session; onEvent(message); onState("live" | "connecting" | "offline")
  constructor(session, socketPath, onEvent, onState) {
    this.session = session;
    this.socketPath = socketPath;
    this.onEvent = onEvent;
    this.onState = onState;
    this.socket = null;
    this.retryMs = RETRY_MIN_MS;
    this.timer = null;
    this.stopped = false;
  }

  async open() {
    this.stopped = false;
    this.onState("connecting");
    let access;
    try {
      access = await this.session.freshAccess();
    } catch (error) {
      this.retryLater();
      return;
    }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = `${scheme}//${location.host}${this.socketPath}`;
    const socket = new WebSocket(url, [SUBPROTOCOL, `${BEARER}${access}`]);
    this.socket = socket;
    socket.onopen = () => {
      this.retryMs = RETRY_MIN_MS;
      this.onState("live");
    };
    socket.onmessage = (event) => this.onEvent(JSON.parse(event.data));
    socket.onclose = () => {
      if (this.socket === socket) this.socket = null;
      if (!this.stopped) this.retryLater();
    };
  }

  retryLater() {
    this.onState("offline");
    if (this.stopped || this.timer !== null) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.open();
    }, this.retryMs);
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.socket) this.socket.close(1000);
    this.socket = null;
    this.onState("offline");
  }
}
