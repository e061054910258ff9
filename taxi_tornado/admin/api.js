// The server's HTTP API as the page uses it: log in, keep the access token fresh, and
// call /api/admin/ with it. Tokens live in sessionStorage: they last as long as the tab
// and are never written to a cookie or a URL of the page.

const STORAGE_KEY = "taxi-admin-tokens";
const REFRESH_MARGIN_S = 60; // refresh an access token this long before it expires

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

export class Session {
  constructor() {
    const saved = sessionStorage.getItem(STORAGE_KEY);
    this.tokens = saved ? JSON.parse(saved) : null;
  }

  get loggedIn() {
    return this.tokens !== null;
  }

  get access() {
    return this.tokens ? this.tokens.access : null;
  }

  get claims() {
    return this.tokens ? tokenClaims(this.tokens.access) : {};
  }

  async logIn(username, password) {
    const tokens = await postJson("/api/log_in/", { username, password });
    this.save(tokens);
    return this.claims;
  }

  logOut() {
    this.tokens = null;
    sessionStorage.removeItem(STORAGE_KEY);
  }

  save(tokens) {
    this.tokens = { ...this.tokens, ...tokens };
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(this.tokens));
  }

  // A fresh access token: refreshed first when it is about to expire.
  async freshAccess() {
    if (!this.tokens) throw new ApiError(401, { detail: "Not logged in." });
    const expires = tokenClaims(this.tokens.access).exp || 0;
    if (expires - Date.now() / 1000 > REFRESH_MARGIN_S) return this.tokens.access;
    const answer = await postJson("/api/token/refresh/", { refresh: this.tokens.refresh });
    this.save({ access: answer.access });
    return answer.access;
  }

  // GET or POST an admin API path; a 401 logs the page out.
  async call(path, method = "GET") {
    const access = await this.freshAccess();
    const response = await fetch(path, {
      method,
      headers: { Authorization: `Bearer ${access}`, "Content-Type": "application/json" },
      body: method === "GET" ? undefined : "{}",
    });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      if (response.status === 401) this.logOut();
      throw new ApiError(response.status, body);
    }
    return body;
  }

  overview() {
    return this.call("/api/admin/");
  }

  // Users whose name starts with `query`: {users: [User], more: bool}.
  findUsers(query) {
    return this.call(`/api/admin/users/?q=${encodeURIComponent(query)}`);
  }

  cancelTrip(tripId) {
    return this.call(`/api/admin/trip/${encodeURIComponent(tripId)}/cancel/`, "POST");
  }

  closeSockets(userId) {
    return this.call(`/api/admin/user/${encodeURIComponent(userId)}/disconnect/`, "POST");
  }
}

async function postJson(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const answer = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, answer);
  return answer;
}

// The payload of a JWT, read without checking it (the server checks every call).
export function tokenClaims(token) {
  const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
}
