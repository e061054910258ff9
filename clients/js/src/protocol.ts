// Placeholder until the server publishes GET /api/asyncapi.json:
// scripts/generate-protocol.mjs overwrites this file from that document.

/** The `data` the client sends, per message type. */
export interface Requests {
  [type: string]: unknown;
}

/** The `data` of the reply, per message type the client sends. */
export interface Replies {
  [type: string]: unknown;
}

/** The `data` of each event type the server sends to groups. */
export interface Events {
  [type: string]: unknown;
}

/** Types whose frames carry an idempotency `key` (PROTOCOL.md, Idempotent requests). */
export const KEYED_TYPES: readonly string[] = ["trip.request", "trip.update", "trip.cancel", "trip.decline"];
