// The delivery rule on its own: exactly once and in offset order per group, whatever
// order a replay and live events arrive in.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Positions } from "../dist/positions.js";

const event = (group, offset, epoch = "e1") => ({ type: "x", data: offset, pos: { group, offset, epoch } });

function run(positions, frames) {
  const out = [];
  for (const frame of frames) positions.accept(frame, (f) => out.push(f.pos ? `${f.pos.group}:${f.pos.offset}` : "nopos"));
  return out;
}

test("a duplicate is dropped and an event without pos always passes", () => {
  const positions = new Positions();
  assert.deepEqual(run(positions, [event("g", 1), event("g", 2), event("g", 2), event("g", 1), { type: "y" }]),
    ["g:1", "g:2", "nopos"]);
});

test("during a resume a live event that beat the replay waits for the older ones", () => {
  const positions = new Positions();
  run(positions, [event("g", 1), event("h", 5)]);
  assert.deepEqual(positions.resume(), { g: { offset: 1, epoch: "e1" }, h: { offset: 5, epoch: "e1" } });
  // Live 4 arrives between the handshake and the resume; the replay brings 2 and 3 (and 4 again).
  const held = run(positions, [event("g", 4), event("g", 2), event("g", 3), event("g", 4), event("other", 1)]);
  assert.deepEqual(held, ["other:1"], "groups being resumed are held, others pass");
  const released = [];
  positions.release((f) => released.push(f.pos.offset));
  assert.deepEqual(released, [2, 3, 4]);
  assert.deepEqual(run(positions, [event("g", 4), event("g", 5)]), ["g:5"]);
});

test("a link lost during a resume drops what was held, so the next resume asks again", () => {
  const positions = new Positions();
  run(positions, [event("g", 1)]);
  positions.resume();
  run(positions, [event("g", 3)]);
  positions.drop();
  assert.deepEqual(positions.resume(), { g: { offset: 1, epoch: "e1" } });
});

test("a new epoch starts the group over", () => {
  const positions = new Positions();
  assert.deepEqual(run(positions, [event("g", 7), event("g", 1, "e2"), event("g", 2, "e2")]), ["g:7", "g:1", "g:2"]);
});
