/**
 * Keeping the token out of what the client says: error details and disconnect reasons
 * end up in crash reports and support tickets, where a live access token is a key
 * anybody can use until it expires. A browser's WebSocket constructor, for one, names
 * the subprotocols it refused in its SyntaxError.
 */

// `bearer.<token>` as offered; a JWT anywhere (a JSON header always encodes to "ey" or
// "ew"); the `token` field of a frame. No lookbehind: Safari before 16.4 cannot parse one.
const SECRETS = /bearer\.\S+|(^|[^A-Za-z0-9_-])e[yw][A-Za-z0-9_-]{6,}\.[^\s'"]*|("token":)\s*"[^"]*"?/g;
// Three base64url parts, header and payload not empty: every character is one a
// subprotocol may hold (RFC 6455: a token of RFC 7230).
const TOKEN = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
const ALLOWED = /[A-Za-z0-9_.-]/;

/** `text` with every token-shaped part replaced by `<redacted>`. */
export function redact(text: string): string {
  return text.replace(SECRETS, (_secret: string, before?: string, field?: string) => {
    if (field) return `${field}<redacted>`;
    if (before !== undefined) return `${before}<redacted>`;
    return "bearer.<redacted>";
  });
}

/**
 * Why `token` cannot travel as `bearer.<token>` (saying where, never what it is), or
 * undefined when it can.
 */
export function tokenProblem(token: string): string | undefined {
  if (TOKEN.test(token)) return undefined;
  const stray = [...token].findIndex((char) => !ALLOWED.test(char));
  const what = stray >= 0 ? `${JSON.stringify(token[stray])} at position ${stray} of ${token.length}` : `${token.split(".").length} dot-separated parts`;
  return `getToken() gave a token with ${what}; an access token is a JWT: three base64url parts joined by dots`;
}
