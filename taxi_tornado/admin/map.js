// The city map: drivers and waiting pick-ups drawn in SVG on a Web Mercator projection,
// framed to fit every point. No tile service is needed: a graticule (lines of latitude
// and longitude) gives the bearings. When the server sets admin.tile_url, tiles from that
// URL are drawn underneath, at the zoom level closest to the frame.

const SVG = "http://www.w3.org/2000/svg";
const TILE = 256; // world width in units at zoom 0, as tile servers count it
const PADDING = 36; // pixels kept clear around the points
const MIN_SPAN = TILE / 2 ** 16; // the closest frame: about a few hundred metres across
const MAX_TILE_ZOOM = 19;
const STEPS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 45];

// Web Mercator: degrees to world units (0..TILE across, north at the top).
export function project(lat, lng) {
  const sin = Math.sin((Math.max(-85.05, Math.min(85.05, lat)) * Math.PI) / 180);
  return {
    x: ((lng + 180) / 360) * TILE,
    y: (0.5 - Math.log((1 + sin) / (1 - sin)) / (4 * Math.PI)) * TILE,
  };
}

function unprojectY(y) {
  const n = Math.PI - (2 * Math.PI * y) / TILE;
  return (180 / Math.PI) * Math.atan(Math.sinh(n));
}

// map: {drivers: [{id, lat, lng, state}], pick_ups: [{trip, lat, lng}]}
export function drawMap(svg, map, tileUrl) {
  const [, , width, height] = svg.getAttribute("viewBox").split(" ").map(Number);
  const drivers = map.drivers || [];
  const pickUps = map.pick_ups || [];
  const points = [...drivers, ...pickUps].map((p) => project(p.lat, p.lng));
  svg.replaceChildren();
  if (points.length === 0) {
    svg.append(element("text", { x: width / 2, y: height / 2, class: "map-empty" },
      "No driver positions or pick-ups yet"));
    return;
  }
  const frame = fit(points, width, height);
  if (tileUrl) drawTiles(svg, frame, tileUrl);
  drawGraticule(svg, frame);
  for (const trip of pickUps) {
    const { x, y } = frame.toScreen(project(trip.lat, trip.lng));
    const pin = element("path", {
      d: `M${x} ${y} l-6 -12 a6.5 6.5 0 1 1 12 0 z`,
      class: "pick-up",
      "data-trip": trip.trip,
    });
    pin.append(element("title", {}, `pick-up of trip ${trip.trip}`));
    svg.append(pin);
  }
  for (const driver of drivers) {
    const { x, y } = frame.toScreen(project(driver.lat, driver.lng));
    const dot = element("circle", {
      cx: x, cy: y, r: 6, class: `driver ${driver.state}`, "data-driver": driver.id,
    });
    dot.append(element("title", {}, `driver ${driver.id} (${driver.state})`));
    svg.append(dot);
  }
}

// The frame that shows every point: centre, scale, and world -> screen.
function fit(points, width, height) {
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const minX = Math.min(...xs), maxX = Math.max(...xs);
  const minY = Math.min(...ys), maxY = Math.max(...ys);
  const span = Math.max((maxX - minX) / (width - 2 * PADDING),
    (maxY - minY) / (height - 2 * PADDING), MIN_SPAN / width);
  const scale = 1 / span; // screen pixels per world unit
  const cx = (minX + maxX) / 2, cy = (minY + maxY) / 2;
  return {
    width, height, scale, cx, cy,
    toScreen: (p) => ({ x: (p.x - cx) * scale + width / 2, y: (p.y - cy) * scale + height / 2 }),
    toWorld: (x, y) => ({ x: (x - width / 2) / scale + cx, y: (y - height / 2) / scale + cy }),
  };
}

function drawTiles(svg, frame, tileUrl) {
  const zoom = Math.max(0, Math.min(MAX_TILE_ZOOM, Math.round(Math.log2(frame.scale))));
  const count = 2 ** zoom;
  const size = TILE / count; // world units per tile
  const topLeft = frame.toWorld(0, 0);
  const bottomRight = frame.toWorld(frame.width, frame.height);
  for (let tx = Math.floor(topLeft.x / size); tx <= Math.floor(bottomRight.x / size); tx++) {
    for (let ty = Math.floor(topLeft.y / size); ty <= Math.floor(bottomRight.y / size); ty++) {
      if (ty < 0 || ty >= count) continue;
      const wrapped = ((tx % count) + count) % count;
      const corner = frame.toScreen({ x: tx * size, y: ty * size });
      svg.append(element("image", {
        href: tileUrl.replace("{z}", zoom).replace("{x}", wrapped).replace("{y}", ty),
        x: corner.x, y: corner.y, width: size * frame.scale + 0.5,
        height: size * frame.scale + 0.5, class: "tile",
      }));
    }
  }
}

// Lines of latitude and longitude at a round step, labelled at the edges.
function drawGraticule(svg, frame) {
  const topLeft = frame.toWorld(0, 0);
  const bottomRight = frame.toWorld(frame.width, frame.height);
  const west = (topLeft.x / TILE) * 360 - 180;
  const east = (bottomRight.x / TILE) * 360 - 180;
  const north = unprojectY(topLeft.y);
  const south = unprojectY(bottomRight.y);
  const step = STEPS.find((s) => (east - west) / s <= 6) || 90;
  const decimals = Math.max(0, -Math.floor(Math.log10(step)));
  for (let lng = Math.ceil(west / step) * step; lng <= east; lng += step) {
    const { x } = frame.toScreen(project(0, lng));
    svg.append(element("line", { x1: x, y1: 0, x2: x, y2: frame.height, class: "grid" }));
    svg.append(element("text", { x: x + 3, y: frame.height - 4, class: "grid-label" },
      `${lng.toFixed(decimals)}°`));
  }
  for (let lat = Math.ceil(south / step) * step; lat <= north; lat += step) {
    const { y } = frame.toScreen(project(lat, 0));
    svg.append(element("line", { x1: 0, y1: y, x2: frame.width, y2: y, class: "grid" }));
    svg.append(element("text", { x: 4, y: y - 3, class: "grid-label" },
      `${lat.toFixed(decimals)}°`));
  }
}

function element(name, attributes, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}
