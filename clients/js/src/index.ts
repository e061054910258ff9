export { TaxiClient } from "./client.js";
export type { ClientEvents, ClientState, EventData, EventFrame, ReplyData, RequestData, Resumed, TaxiClientOptions, WebSocketConstructor, WebSocketLike } from "./client.js";
export { TaxiError } from "./error.js";
export type { FieldErrors } from "./error.js";
export type { Frame, Position } from "./positions.js";
export * from "./protocol.js";
