// Writing the overview into the page: cards, tables and the action log. Every value goes
// in as text (textContent), never as HTML, so nothing a user typed (an address, a name)
// can run as code.

const $ = (id) => document.getElementById(id);
const CANCELABLE = new Set(["REQUESTED", "STARTED"]);
const DRIVING = new Set(["STARTED", "IN_PROGRESS"]); // a driver holds one such trip at most
const SHORT_ID = 8; // characters of an id shown; the whole id is in the cell's title
const CONFIRM_MS = 3000;
// Tables are redrawn every second, so a button's state lives here, by action, not in
// the button: an armed or running action survives the redraw.
const armedUntil = new Map(); // action key -> time (ms) until which a click confirms
const running = new Set(); // action keys whose request is on its way

export function renderCards(overview) {
  const connections = overview.connections;
  $("connections-total").textContent = connections.total;
  const versions = Object.entries(connections.by_version)
    .map(([version, count]) => `v${version}: ${count}`).join(" · ") || "none open";
  const staff = connections.staff || 0; // operators' pages, this one among them
  $("connections-versions").textContent = staff
    ? `${versions} · and ${staff} operator${staff === 1 ? "" : "s"}` : versions;
  const drivers = overview.drivers;
  $("drivers-connected").textContent = drivers.connected;
  $("drivers-available").textContent = drivers.available ?? "–";
  $("drivers-on-trip").textContent = drivers.on_trip;
  const trips = overview.trips;
  $("trips-unfinished").textContent = trips.unfinished_total;
  $("trips-by-status").textContent = Object.entries(trips.by_status)
    .map(([status, count]) => `${status.toLowerCase().replace("_", " ")} ${count}`).join(" · ");
  const health = overview.health;
  const healthy = health.store && health.hub && overview.complete;
  $("health").textContent = healthy ? "OK" : "Degraded";
  $("health").className = `big ${healthy ? "good" : "bad"}`;
  $("health-detail").textContent = `store ${health.store ? "up" : "DOWN"} · hub ${
    health.hub ? "up" : "DOWN"} · ${overview.nodes.length} process${
    overview.nodes.length === 1 ? "" : "es"}${overview.complete ? "" : " (list incomplete)"}`;
}

// rows: trip rows (Trip objects, rider and driver at least {id, username});
// actions: {cancel(tripId), closeSockets(user)}
export function renderTrips(rows, serverNow, actions) {
  const holding = tripsByDriver(rows);
  const body = $("trips");
  body.replaceChildren(...rows.map((trip) => tripRow(trip, serverNow, actions, holding)));
  $("no-trips").hidden = rows.length > 0;
  const several = [...holding.values()].filter((held) => held.length > 1);
  $("trips-warning").hidden = several.length === 0;
  $("trips-warning").textContent = several.map((held) => `${held[0].driver.username} holds ${
    held.length} trips at once (${held.map((trip) => shortId(trip.id)).join(", ")})`)
    .join("; ");
}

// Driver id -> the STARTED and IN_PROGRESS trips they hold: more than one is a fault
// (a claim that should have been refused), which the table flags.
function tripsByDriver(rows) {
  const holding = new Map();
  for (const trip of rows) {
    if (!trip.driver || !DRIVING.has(trip.status)) continue;
    const held = holding.get(trip.driver.id) || [];
    held.push(trip);
    holding.set(trip.driver.id, held);
  }
  return holding;
}

function tripRow(trip, serverNow, actions, holding) {
  const row = document.createElement("tr");
  row.dataset.trip = trip.id;
  row.dataset.status = trip.status;
  const id = cell(shortId(trip.id));
  id.className = "id";
  id.title = trip.id;
  const age = cell(formatAge((serverNow - Date.parse(trip.created)) / 1000));
  age.className = "age";
  age.dataset.created = trip.created;
  const status = cell(trip.status.replace("_", " "));
  status.className = `status ${trip.status.toLowerCase()}`;
  const rider = person(trip.rider, actions);
  rider.classList.add("rider");
  const driver = person(trip.driver, actions);
  driver.classList.add("driver");
  flagSeveral(row, driver, trip, holding);
  const buttons = cell("");
  if (CANCELABLE.has(trip.status)) {
    buttons.append(confirmButton("Cancel", "cancel", `cancel:${trip.id}`,
      () => actions.cancel(trip.id)));
  }
  row.append(id, age, status, rider, driver,
    place(trip.pick_up_address, trip.pick_up, "pick-up"),
    place(trip.drop_off_address, trip.drop_off, "drop-off"), buttons);
  return row;
}

// Marks the row and driver cell of a trip whose driver holds other trips too.
function flagSeveral(row, driverCell, trip, holding) {
  const held = trip.driver && DRIVING.has(trip.status) ? holding.get(trip.driver.id) : null;
  if (!held || held.length < 2) return;
  row.classList.add("flagged");
  driverCell.classList.add("several");
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = `${held.length} trips`;
  badge.title = `${trip.driver.username} holds ${held.length} trips at once`;
  driverCell.prepend(badge, " ");
}

function place(address, position, kind) {
  const td = cell(address);
  td.className = kind;
  td.title = position ? `${position.lat}, ${position.lng}` : "no position given";
  return td;
}

function person(user, actions) {
  const td = cell(user ? user.username : "—");
  if (!user) return td;
  td.title = user.id;
  td.append(" ", closeSocketsButton(user, "⏏", actions));
  return td;
}

function closeSocketsButton(user, label, actions) {
  const button = confirmButton(label, "close-sockets", `close:${user.id}`,
    () => actions.closeSockets(user));
  button.title = `close the sockets of ${user.username}`;
  return button;
}

// The users a name search found: name, group and short id, each with its action.
// users: PROTOCOL User objects; more: whether the server had more to give.
export function renderUsers(users, more, actions) {
  $("users").replaceChildren(...users.map((user) => {
    const row = document.createElement("tr");
    row.dataset.user = user.id;
    const name = cell(user.username);
    name.className = "name";
    const full = [user.first_name, user.last_name].filter(Boolean).join(" ");
    const id = cell(shortId(user.id));
    id.className = "id";
    id.title = user.id;
    const buttons = cell("");
    buttons.append(closeSocketsButton(user, "Close sockets", actions));
    row.append(name, cell(full), cell(user.group), id, buttons);
    return row;
  }));
  const note = users.length === 0 ? "No user's name starts so."
    : more ? `The first ${users.length} by name: type more of it.` : "";
  $("users-note").textContent = note;
  $("users-note").hidden = note === "";
}

export function shortId(id) {
  return id.slice(0, SHORT_ID);
}

// A button that asks for a second click within CONFIRM_MS before it acts; `act`
// returns a promise. `key` names the action (the same for every redraw of the button).
function confirmButton(label, kind, key, act) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = `small-button ${kind}`;
  const show = () => {
    const armed = (armedUntil.get(key) || 0) > Date.now();
    button.textContent = armed ? "Sure?" : label;
    button.classList.toggle("armed", armed);
    button.disabled = running.has(key);
  };
  show();
  button.addEventListener("click", () => {
    if ((armedUntil.get(key) || 0) <= Date.now()) {
      armedUntil.set(key, Date.now() + CONFIRM_MS);
      show();
      setTimeout(show, CONFIRM_MS + 50);
      return;
    }
    armedUntil.delete(key);
    running.add(key);
    show();
    act().finally(() => running.delete(key));
  });
  return button;
}

// Ages tick between updates: every `.age` cell is recomputed against the server clock.
export function tickAges(serverNow) {
  for (const td of document.querySelectorAll("#trips .age")) {
    td.textContent = formatAge((serverNow - Date.parse(td.dataset.created)) / 1000);
  }
}

export function formatAge(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 3600) return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}`;
}

export function renderMessages(messages) {
  const types = new Set([...Object.keys(messages.in || {}), ...Object.keys(messages.out || {})]);
  const seen = [...types].filter((type) => total(messages.in, type) || total(messages.out, type));
  const rows = seen.sort().map((type) => numberRow([
    type, rate(messages.in_per_s, type), total(messages.in, type),
    rate(messages.out_per_s, type), total(messages.out, type)]));
  $("messages").replaceChildren(...rows);
  const codes = Object.keys(messages.errors || {}).filter((code) => total(messages.errors, code))
    .sort();
  $("errors").replaceChildren(...codes.map((code) => numberRow([
    code, rate(messages.errors_per_s, code), total(messages.errors, code)])));
  $("no-errors").hidden = codes.length > 0;
}

export function renderNodes(nodes) {
  $("nodes").replaceChildren(...nodes.map((node) => numberRow([
    shortId(node.id), (node.listen || []).join(", ") || "–", `${node.host} · ${node.pid}`,
    node.version,
    formatAge(node.uptime_s), node.connections.total,
    node.ready.store ? "up" : "DOWN", node.ready.hub ? "up" : "DOWN"])));
}

export function logAction(text, ok) {
  const item = document.createElement("li");
  item.className = ok ? "good" : "bad";
  item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  $("actions").prepend(item);
}

function numberRow(values) {
  const row = document.createElement("tr");
  row.append(...values.map((value) => cell(value)));
  return row;
}

function rate(values, key) {
  return ((values || {})[key] || 0).toFixed(1);
}

function total(values, key) {
  return Math.round((values || {})[key] || 0);
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text;
  return td;
}
