/** An event's place in its group's history (docs/protocol.md, Positions). */
export interface Position {
  group: string;
  offset: number;
  epoch: string;
}

/** A frame as it comes off the socket. */
export interface Frame {
  type: string;
  data?: unknown;
  id?: string | number | null;
  pos?: Position;
  [field: string]: unknown;
}

type Deliver = (frame: Frame) => void;

/**
 * The last position heard in every group, and the rule that makes delivery exactly
 * once and in order per group: an event at or below the position held (same epoch) is
 * one the app already has; events of the groups a resume is replaying are held back
 * until its answer, then delivered sorted by offset, because a live event that arrived
 * between the handshake and the resume frame can precede older replayed ones.
 */
export class Positions {
  private last = new Map<string, { offset: number; epoch: string }>();
  private held: Map<string, Frame[]> | undefined;

  /** The `positions` of a `session.resume`; holds those groups' events until release(). */
  resume(): Record<string, { offset: number; epoch: string }> {
    const positions: Record<string, { offset: number; epoch: string }> = {};
    this.held = new Map();
    for (const [group, position] of this.last) {
      positions[group] = position;
      this.held.set(group, []);
    }
    return positions;
  }

  /** Deliver `frame` unless it is held back or already delivered. */
  accept(frame: Frame, deliver: Deliver): void {
    const pos = frame.pos;
    if (!pos || typeof pos.group !== "string" || typeof pos.offset !== "number") {
      deliver(frame);
      return;
    }
    const waiting = this.held && this.held.get(pos.group);
    if (waiting) {
      waiting.push(frame);
      return;
    }
    const last = this.last.get(pos.group);
    if (last && last.epoch === pos.epoch && pos.offset <= last.offset) return;
    this.last.set(pos.group, { offset: pos.offset, epoch: pos.epoch });
    deliver(frame);
  }

  /** The replay is over: deliver what was held, per group in offset order. */
  release(deliver: Deliver): void {
    const held = this.held;
    this.held = undefined;
    if (!held) return;
    for (const frames of held.values()) {
      frames.sort((a, b) => a.pos!.offset - b.pos!.offset);
      for (const frame of frames) this.accept(frame, deliver);
    }
  }

  /**
   * The link dropped during a replay: forget what was held without moving the
   * positions, so that the next resume asks for those events again (delivering them
   * now could skip older ones still to be replayed).
   */
  drop(): void {
    this.held = undefined;
  }
}
