// src/protocol.ts is what the generator makes of the server's AsyncAPI document today:
// a server change to a message schema fails here until `npm run generate` is run.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { OUTPUT, documentFromCommand, generate } from "../scripts/generate-protocol.mjs";
import { PYTHON } from "./harness.mjs";

test("src/protocol.ts is generated from the server's current AsyncAPI document", () => {
  const current = readFileSync(OUTPUT, "utf8");
  const doc = documentFromCommand(PYTHON);
  assert.equal(current, generate(doc), "src/protocol.ts is stale: run `npm run generate` and commit it");
});

test("the generator turns messages, replies, events and keyed marks into types", () => {
  const doc = JSON.parse(readFileSync(new URL("./fixtures/asyncapi-sample.json", import.meta.url), "utf8"));
  const source = generate(doc);
  assert.match(source, /export type LatLng = \{\n  lat: number;\n  lng: number;\n\};/);
  assert.match(source, /export interface Requests \{\n  "trip\.request": \{\n    pick_up_address: string;\n    drop_off_address: string;\n    pick_up\?: LatLng \| null;\n  \};\n\}/);
  assert.match(source, /export interface Replies \{\n  "trip\.request": Trip;\n\}/);
  assert.match(source, /export interface Events \{\n  "trip\.updated": Trip;\n\}/);
  assert.match(source, /status\?: "REQUESTED" \| "STARTED";/);
  assert.match(source, /export const KEYED_TYPES: readonly string\[\] = \["trip\.request"\];/);
});
