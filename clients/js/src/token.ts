const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/**
 * The `exp` claim of a JWT in milliseconds, read without verifying the token (the
 * server does that), or undefined when the token has none. A decoder of its own:
 * `atob` is missing on older React Native engines and `Buffer` outside Node.
 */
export function tokenExpiry(token: string): number | undefined {
  const part = token.split(".")[1] || "";
  let bits = 0;
  let value = 0;
  let text = "";
  for (const char of part) {
    const index = ALPHABET.indexOf(char === "+" ? "-" : char === "/" ? "_" : char);
    if (index < 0) continue;
    value = (value << 6) | index;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      // Latin-1 is enough: `exp` is ASCII, and JSON.parse accepts the other bytes.
      text += String.fromCharCode((value >> bits) & 255);
    }
  }
  try {
    const exp = JSON.parse(text).exp;
    return typeof exp === "number" ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}
