#!/usr/bin/env node
// Writes src/protocol.ts from the server's AsyncAPI 3.0 document: the `data` type of
// every message a client sends (Requests), of each one's reply (Replies) and of every
// event the server sends (Events), and which types are keyed.
//
//   node scripts/generate-protocol.mjs                 # from `$TAXI_PYTHON -m taxi_tornado asyncapi`
//                                                      # (built-in plugins only)
//   node scripts/generate-protocol.mjs --url http://127.0.0.1:8000/api/asyncapi.json
//   node scripts/generate-protocol.mjs --file asyncapi.json
//   ... --check                                        # exit 1 when src/protocol.ts is stale
//
// No dependencies: JSON Schema (draft 2020-12) to TypeScript for the parts the
// server's schemas use; anything else becomes `unknown`, never a wrong type.
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const OUTPUT = fileURLToPath(new URL("../src/protocol.ts", import.meta.url));
/** docs/protocol.md's built-in keyed types, for a document that does not mark them. */
const BUILT_IN_KEYED = ["trip.request", "trip.update", "trip.cancel", "trip.decline"];
const KEYED_MARKS = ["x-keyed", "x-taxi-keyed", "x-idempotent"];

/**
 * The document printed by `taxi-tornado asyncapi`, run with `python`: the server's own
 * types, the example SOS plugin left out (the test environment installs it).
 */
export function documentFromCommand(python = process.env.TAXI_PYTHON || "python3") {
  const env = { ...process.env, TAXI_PLUGINS_DISABLED: "sos" };
  const out = execFileSync(python, ["-m", "taxi_tornado", "asyncapi"], { encoding: "utf8", env, stdio: ["ignore", "pipe", "pipe"] });
  return JSON.parse(out);
}

/** The TypeScript source of src/protocol.ts for the AsyncAPI document `doc`. */
export function generate(doc) {
  const names = new Map(); // "#/components/schemas/X" -> TypeScript name
  const declarations = [];
  const resolve = (value, seen = new Set()) => {
    while (value && typeof value === "object" && typeof value.$ref === "string" && !seen.has(value.$ref)) {
      seen.add(value.$ref);
      value = pointer(doc, value.$ref);
    }
    return value;
  };

  const typeOf = (schema, indent) => {
    if (schema === true || schema === undefined || schema === null) return "unknown";
    if (schema === false) return "never";
    if (typeof schema.$ref === "string") return named(schema.$ref);
    if ("const" in schema) return literal(schema.const);
    if (Array.isArray(schema.enum)) return union(schema.enum.map(literal));
    if (Array.isArray(schema.anyOf) || Array.isArray(schema.oneOf)) {
      return union((schema.anyOf || schema.oneOf).map((part) => typeOf(part, indent)));
    }
    if (Array.isArray(schema.allOf)) return schema.allOf.map((part) => wrap(typeOf(part, indent))).join(" & ") || "unknown";
    const types = Array.isArray(schema.type) ? schema.type : schema.type ? [schema.type] : guessTypes(schema);
    if (!types.length) return "unknown";
    return union(types.map((type) => typeFor(type, schema, indent)));
  };

  const typeFor = (type, schema, indent) => {
    switch (type) {
      case "string": return "string";
      case "integer":
      case "number": return "number";
      case "boolean": return "boolean";
      case "null": return "null";
      case "array": return arrayType(schema, indent);
      case "object": return objectType(schema, indent);
      default: return "unknown";
    }
  };

  const arrayType = (schema, indent) => {
    if (Array.isArray(schema.prefixItems)) {
      const items = schema.prefixItems.map((item) => typeOf(item, indent));
      return `[${items.join(", ")}${schema.items === false ? "" : ", ...unknown[]"}]`;
    }
    return `${wrap(typeOf(schema.items, indent))}[]`;
  };

  const objectType = (schema, indent) => {
    const properties = schema.properties || {};
    const required = new Set(schema.required || []);
    const inner = indent + "  ";
    const lines = [];
    for (const [key, value] of Object.entries(properties)) {
      const doc = resolve(value)?.description;
      if (doc) lines.push(`${inner}/** ${oneLine(doc)} */`);
      lines.push(`${inner}${propertyName(key)}${required.has(key) ? "" : "?"}: ${typeOf(value, inner)};`);
    }
    const extra = schema.additionalProperties;
    if (extra !== undefined && extra !== false) {
      const value = lines.length || extra === true ? "unknown" : typeOf(extra, inner);
      lines.push(`${inner}[key: string]: ${value};`);
    }
    if (!lines.length) return extra === false ? "Record<string, never>" : "{ [key: string]: unknown }";
    return `{\n${lines.join("\n")}\n${indent}}`;
  };

  const named = (ref) => {
    if (names.has(ref)) return names.get(ref);
    const target = resolve({ $ref: ref });
    if (!ref.startsWith("#/components/schemas/")) return typeOf(target, "");
    const name = uniqueName(pascal(ref.split("/").pop()), names);
    names.set(ref, name);
    const comment = target && target.description ? `/** ${oneLine(target.description)} */\n` : "";
    declarations.push(`${comment}export type ${name} = ${typeOf(target, "")};`);
    return name;
  };

  const { requests, replies, events, keyed } = collect(doc, resolve);
  const block = (title, comment, entries) => {
    const body = [...entries].sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([type, schemas]) => `  ${literal(type)}: ${union(schemas.map((schema) => typeOf(schema, "  ")))};`);
    return `/** ${comment} */\nexport interface ${title} {\n${body.join("\n")}\n}`;
  };
  const interfaces = [
    block("Requests", "The `data` a client sends, per message type.", requests),
    block("Replies", "The `data` of the reply, per message type a client sends.", replies),
    block("Events", "The `data` of each event type the server sends.", events),
  ];
  const keyedList = [...keyed].sort().map(literal).join(", ");
  return [
    "// Generated by scripts/generate-protocol.mjs from the server's AsyncAPI document",
    "// (GET /api/asyncapi.json, or `taxi-tornado asyncapi`). Do not edit: `npm run generate`.",
    "/* eslint-disable */",
    "",
    ...declarations.map((text) => `${text}\n`),
    ...interfaces.map((text) => `${text}\n`),
    "/** Types whose frames carry an idempotency `key` (docs/protocol.md, Idempotent requests). */",
    `export const KEYED_TYPES: readonly string[] = [${keyedList}];`,
    "",
  ].join("\n");
}

/**
 * Every message of the document, sorted by who sends it. Operations say it (AsyncAPI 3:
 * from the server's side, `receive` is what clients send, `send` what they get, and an
 * operation's `reply` the answer); a message no operation names is told apart by an
 * `x-direction`/`x-sender` mark, else counted as an event.
 */
function collect(doc, resolve) {
  const requests = new Map();
  const replies = new Map();
  const events = new Map();
  const keyed = new Set();
  const add = (map, type, schema) => {
    const list = map.get(type) || [];
    if (!list.some((known) => JSON.stringify(known) === JSON.stringify(schema))) list.push(schema);
    map.set(type, list);
  };
  const seen = new Set();
  const messageOf = (ref) => {
    const message = resolve(ref);
    if (!message || typeof message !== "object") return undefined;
    const type = typeName(message, resolve, ref);
    if (!type) return undefined;
    seen.add(message);
    if (KEYED_MARKS.some((mark) => message[mark] === true || message.bindings?.[mark] === true)) keyed.add(type);
    return { type, data: dataSchema(message, resolve) };
  };
  for (const operation of Object.values(doc.operations || {})) {
    const op = resolve(operation);
    const sent = (op.messages || []).map(messageOf).filter(Boolean);
    const answers = (resolve(op.reply)?.messages || []).map(messageOf).filter(Boolean);
    for (const { type, data } of sent) {
      if (op.action === "receive") {
        add(requests, type, data);
        for (const answer of answers) if (answer.type !== "error") add(replies, type, answer.data);
      } else {
        add(events, type, data);
      }
    }
  }
  for (const [key, message] of allMessages(doc, resolve)) {
    if (seen.has(message)) continue;
    const found = messageOf(message);
    if (!found) continue;
    const direction = String(message["x-direction"] || message["x-sender"] || "").toLowerCase();
    if (["client", "send", "request", "publish", "in"].includes(direction)) add(requests, found.type, found.data);
    else add(events, found.type, found.data);
    void key;
  }
  if (!keyed.size) for (const type of BUILT_IN_KEYED) if (requests.has(type) || !requests.size) keyed.add(type);
  return { requests, replies, events, keyed };
}

function* allMessages(doc, resolve) {
  yield* Object.entries(doc.components?.messages || {}).map(([key, value]) => [key, resolve(value)]);
  for (const channel of Object.values(doc.channels || {})) {
    yield* Object.entries(resolve(channel)?.messages || {}).map(([key, value]) => [key, resolve(value)]);
  }
}

/** A message's type: its `name`, or the `const` of its payload's `type` property. */
function typeName(message, resolve) {
  const payload = resolve(message.payload);
  const constType = resolve(payload?.properties?.type)?.const;
  return typeof constType === "string" ? constType : typeof message.name === "string" ? message.name : undefined;
}

/** The schema of `data`: the payload's `data` property when the payload is the frame. */
function dataSchema(message, resolve) {
  const payload = message.payload?.schema && message.payload?.schemaFormat ? message.payload.schema : message.payload;
  const resolved = resolve(payload);
  if (resolved && typeof resolved === "object" && resolved.properties?.type && "data" in (resolved.properties || {})) {
    return resolved.properties.data;
  }
  return payload === undefined ? true : payload;
}

function pointer(doc, ref) {
  if (!ref.startsWith("#")) return true; // an outside reference: unknown
  let node = doc;
  for (const part of ref.slice(1).split("/").filter(Boolean)) {
    node = node?.[decodeURIComponent(part).replace(/~1/g, "/").replace(/~0/g, "~")];
  }
  return node === undefined ? true : node;
}

function guessTypes(schema) {
  if (schema.properties || schema.additionalProperties !== undefined || schema.required) return ["object"];
  if (schema.items !== undefined || schema.prefixItems) return ["array"];
  return [];
}

function union(types) {
  const unique = [...new Set(types)];
  if (unique.includes("unknown")) return "unknown";
  return unique.length ? unique.join(" | ") : "never";
}

const wrap = (type) => (/[|&]/.test(type) && !type.startsWith("{") ? `(${type})` : type);
const literal = (value) => JSON.stringify(value) ?? "unknown";
const propertyName = (key) => (/^[A-Za-z_$][A-Za-z0-9_$]*$/.test(key) ? key : JSON.stringify(key));
const oneLine = (text) => String(text).replace(/\s+/g, " ").replace(/\*\//g, "* /").trim();
const pascal = (text) => text.replace(/(^|[^A-Za-z0-9]+)([A-Za-z0-9])/g, (_, __, c) => c.toUpperCase()).replace(/^[^A-Za-z_]/, "_$&");

function uniqueName(base, names) {
  const taken = new Set(names.values());
  let name = base;
  for (let i = 2; taken.has(name); i++) name = `${base}${i}`;
  return name;
}

async function main(args) {
  const at = (flag) => (args.includes(flag) ? args[args.indexOf(flag) + 1] : undefined);
  let doc;
  if (at("--file")) doc = JSON.parse(readFileSync(at("--file"), "utf8"));
  else if (at("--url")) doc = await (await fetch(at("--url"))).json();
  else doc = documentFromCommand();
  const source = generate(doc);
  if (args.includes("--check")) {
    const current = readFileSync(OUTPUT, "utf8");
    if (current !== source) {
      console.error("src/protocol.ts is stale: run `npm run generate` and commit it");
      process.exit(1);
    }
    return;
  }
  writeFileSync(OUTPUT, source);
  console.log(`wrote ${OUTPUT}`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  main(process.argv.slice(2)).catch((error) => {
    console.error(String(error && error.stack ? error.stack : error));
    process.exit(1);
  });
}
