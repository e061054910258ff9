// The operators' page: log in, read GET /api/admin/ once, then follow the live socket.
//
// State is the latest overview plus the unfinished trips by id. `admin.stats` replaces
// the overview every second; `admin.trip` moves one trip at once. A trip row is only
// ever replaced by a newer version of itself (by its `updated` time), so a stats snapshot
// taken a moment before an event cannot undo it.
//
// Drawing the table and the map is the page's whole cost, so trip events are drawn
// together: at most once per REDRAW_MS, and at once with each `admin.stats`. A busy city
// sends dozens of trip events a second: with one redraw each, a simulated city of 200
// drivers and 100 riders (docs/simulate.md) kept the page's main thread busy 9 s of
// every 10 on a loaded 2-core machine; drawn together, 3.6 s.

import { Session } from "./api.js";
import { LiveLink } from "./live.js";
import { drawMap } from "./map.js";
import {
  logAction, renderCards, renderMessages, renderNodes, renderTrips, renderUsers, shortId,
  tickAges,
} from "./view.js";

const $ = (id) => document.getElementById(id);
const FINAL = new Set(["COMPLETED", "CANCELED"]);
const LIVE_LABELS = { live: "live", connecting: "connecting…", offline: "offline" };
const REDRAW_MS = 250;

const session = new Session();
const state = {
  overview: null,
  trips: new Map(), // id -> trip row, unfinished only
  updated: new Map(), // id -> the newest `updated` heard for the trip
  clockOffset: 0, // server clock minus this browser's, in ms
  link: null,
  redrawTimer: null, // a redraw of the trips and the map is due
};
const actions = { cancel, closeSockets };

$("login-form").addEventListener("submit", logIn);
$("log-out").addEventListener("click", logOut);
$("user-search").addEventListener("submit", findUsers);
setInterval(() => tickAges(serverNow()), 1000);
if (session.loggedIn) enter(); else showLogIn("");

async function logIn(event) {
  event.preventDefault();
  try {
    await session.logIn($("username").value, $("password").value);
  } catch (error) {
    showLogIn(error.message);
    return;
  }
  $("password").value = "";
  enter();
}

// The server decides who is staff: a rider's or driver's token gets a 403 here.
async function enter() {
  let overview;
  try {
    overview = await session.overview();
  } catch (error) {
    session.logOut();
    showLogIn(error.message);
    return;
  }
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("log-out").hidden = false;
  $("who").textContent = session.claims.username;
  applyOverview(overview);
  state.link = new LiveLink(session, overview.page.socket_path, onEvent, showLinkState);
  state.link.open();
}

function logOut() {
  if (state.link) state.link.close();
  state.link = null;
  session.logOut();
  showLogIn("");
}

function showLogIn(message) {
  $("dashboard").hidden = true;
  $("log-out").hidden = true;
  $("who").textContent = "";
  $("login").hidden = false;
  $("login-error").textContent = message;
}

function showLinkState(linkState) {
  $("live").textContent = LIVE_LABELS[linkState];
  $("live").className = `live ${linkState === "live" ? "on" : "off"}`;
}

function onEvent(message) {
  if (message.type === "admin.stats") applyOverview(message.data);
  else if (message.type === "admin.trip") applyTrip(message.data);
}

function applyOverview(overview) {
  state.overview = overview;
  state.clockOffset = Date.parse(overview.generated) - Date.now();
  const trips = new Map();
  for (const row of overview.trips.unfinished) {
    if (!isStale(row)) trips.set(row.id, row);
  }
  for (const [id, trip] of state.trips) { // heard of after the snapshot was taken
    if (!trips.has(id) && trip.updated > overview.generated) trips.set(id, trip);
  }
  state.trips = trips;
  renderCards(overview);
  renderMessages(overview.messages);
  renderNodes(overview.nodes);
  redrawTrips();
}

function applyTrip(trip) {
  if (isStale(trip)) return;
  state.updated.set(trip.id, trip.updated);
  if (FINAL.has(trip.status)) state.trips.delete(trip.id);
  else state.trips.set(trip.id, trip);
  redrawSoon();
}

function redrawSoon() {
  if (state.redrawTimer === null) state.redrawTimer = setTimeout(redrawTrips, REDRAW_MS);
}

function isStale(trip) {
  const newest = state.updated.get(trip.id);
  return newest !== undefined && newest > trip.updated;
}

function redrawTrips() {
  clearTimeout(state.redrawTimer);
  state.redrawTimer = null;
  const rows = [...state.trips.values()].sort((a, b) => a.created.localeCompare(b.created));
  renderTrips(rows, serverNow(), actions);
  $("trips-shown").textContent = state.overview.trips.unfinished_total > rows.length
    ? `(oldest ${rows.length} of ${state.overview.trips.unfinished_total})` : "";
  const pickUps = rows.filter((trip) => trip.status === "REQUESTED" && trip.pick_up)
    .map((trip) => ({ trip: trip.id, ...trip.pick_up }));
  const drivers = state.overview.map.drivers;
  drawMap($("map"), { drivers, pick_ups: pickUps }, state.overview.page.tile_url);
  $("map-note").textContent = `${drivers.length} located driver${
    drivers.length === 1 ? "" : "s"} · ${pickUps.length} waiting pick-up${
    pickUps.length === 1 ? "" : "s"}`;
}

function serverNow() {
  return Date.now() + state.clockOffset;
}

async function cancel(tripId) {
  try {
    const trip = await session.cancelTrip(tripId);
    logAction(`canceled trip ${shortId(tripId)}`, true);
    applyTrip(trip);
  } catch (error) {
    logAction(`could not cancel trip ${shortId(tripId)}: ${error.message}`, false);
    afterFailure(error);
  }
}

// user: {id, username} (a trip's rider or driver, or a user found by name)
async function closeSockets(user) {
  try {
    await session.closeSockets(user.id);
    logAction(`closed the sockets of ${user.username} (${shortId(user.id)})`, true);
  } catch (error) {
    logAction(`could not close the sockets of ${user.username}: ${error.message}`, false);
    afterFailure(error);
  }
}

// Operators know users by name: the search answers the users whose name starts so,
// each with its actions, so that nobody copies an id.
async function findUsers(event) {
  event.preventDefault();
  const query = $("user-query").value.trim();
  if (!query) return;
  try {
    const found = await session.findUsers(query);
    renderUsers(found.users, found.more, actions);
  } catch (error) {
    logAction(`could not find users: ${error.message}`, false);
    afterFailure(error);
  }
}

function afterFailure(error) {
  if (error.status === 401) logOut();
  else if (state.overview) redrawTrips();
}
