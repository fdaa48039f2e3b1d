/**
 * The record of delivery pauses (daily quota spent, sending paused), for two uses: the local back end
 * keeps the current pause across restarts here, and MAX_QUEUE_AGE does not count paused time.
 *
 * Why exempt paused time instead of extending each message's age clock: a pause stops ALL delivery, so
 * every message that waited in the spool during it waited exactly the paused interval (from its
 * reception, if it arrived during the pause). One short list of intervals therefore gives every
 * message's exemption — `age = (now − receivedAt) − paused time within [receivedAt, now]` — without
 * touching the spool's rows or schema, and without a write per message when a pause starts or ends.
 *
 * Durability: the file (`<SPOOL_DIR>/delivery-pauses.json`, next to the spool it protects) is replaced
 * atomically (temp file, fsync, rename) at each start and end of a pause, so a restart during a pause
 * finds it still paused, with its start time, and a crash while paused counts the time the relay was
 * down as paused (it was: nothing could have been delivered). With Redis the shared pause is the truth
 * and this file a replica's copy of the pauses it saw, merged with Redis's list, so a Redis that lost
 * its data does not make mail expire either. A write that fails is logged and the record kept in memory.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../observability/logger';
import { isPauseReason, type DeliveryPauseState } from './backend';

export const PAUSE_LEDGER_FILE = 'delivery-pauses.json';

/** Intervals kept at most (merged when they touch); older ones cannot matter (see prune). */
const MAX_INTERVALS = 1000;

interface LedgerFile {
  current: DeliveryPauseState | null;
  past: Array<[number, number]>;
}

/** Sorted, non-overlapping union of intervals. */
function union(intervals: Array<[number, number]>): Array<[number, number]> {
  const sorted = intervals.filter(([a, b]) => b > a).sort((x, y) => x[0] - y[0]);
  const out: Array<[number, number]> = [];
  for (const [a, b] of sorted) {
    const lastOne = out[out.length - 1];
    if (lastOne && a <= lastOne[1]) lastOne[1] = Math.max(lastOne[1], b);
    else out.push([a, b]);
  }
  return out;
}

export class PauseLedger {
  current?: DeliveryPauseState;
  private past: Array<[number, number]> = [];

  constructor(
    private readonly file: string | undefined,
    private readonly logger?: Logger,
  ) {
    if (file) this.load(file);
  }

  /** The ledger of a spool directory (undefined dir: in memory only, for tests). */
  static forSpool(dir: string | undefined, logger?: Logger): PauseLedger {
    return new PauseLedger(dir ? path.join(dir, PAUSE_LEDGER_FILE) : undefined, logger);
  }

  private load(file: string): void {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        this.logger?.error({ err, file }, 'cannot read the record of delivery pauses: starting without it');
      }
      return;
    }
    try {
      const data = JSON.parse(text) as Partial<LedgerFile>;
      const c = data.current;
      if (c && isPauseReason(String(c.reason)) && Number.isFinite(c.since)) {
        this.current = { reason: c.reason, since: c.since };
      }
      const past = Array.isArray(data.past) ? data.past : [];
      this.past = union(past.filter((x) => Array.isArray(x) && x.every(Number.isFinite)));
    } catch (err) {
      this.logger?.error({ err, file }, 'the record of delivery pauses is unreadable: starting without it');
    }
  }

  private save(): void {
    if (!this.file) return;
    const tmp = `${this.file}.tmp`;
    const data: LedgerFile = { current: this.current ?? null, past: this.past };
    try {
      const fd = fs.openSync(tmp, 'w', 0o600);
      try {
        fs.writeFileSync(fd, JSON.stringify(data));
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, this.file);
    } catch (err) {
      this.logger?.error(
        { err, file: this.file },
        'cannot write the record of delivery pauses (kept in memory; a restart may count paused time towards MAX_QUEUE_AGE)',
      );
    }
  }

  /** A pause began (no-op when one is recorded already). */
  start(state: DeliveryPauseState): void {
    if (this.current) return;
    this.current = { ...state };
    this.save();
  }

  /** The pause ended at `until`: it joins the past ones. Returns it. */
  end(until: number): DeliveryPauseState | undefined {
    const c = this.current;
    if (!c) return undefined;
    this.current = undefined;
    this.past = union([...this.past, [c.since, Math.max(c.since, until)]]);
    this.save();
    return c;
  }

  /** Add pauses learnt elsewhere (the shared list in Redis). */
  merge(intervals: Array<[number, number]>): void {
    const merged = union([...this.past, ...intervals]);
    if (JSON.stringify(merged) === JSON.stringify(this.past)) return;
    this.past = merged;
    this.save();
  }

  pastPauses(): Array<[number, number]> {
    return this.past.map(([a, b]) => [a, b] as [number, number]);
  }

  /** Paused time (ms) within [from, to], the current pause counted up to `to`. */
  pausedWithin(from: number, to: number): number {
    const all = union([
      ...this.past,
      ...(this.current ? [[this.current.since, to] as [number, number]] : []),
    ]);
    let total = 0;
    for (const [a, b] of all) total += Math.max(0, Math.min(b, to) - Math.max(a, from));
    return total;
  }

  /**
   * Forget pauses that can no longer change a decision: a message received before
   * `now − maxAgeMs − (all paused time)` is past MAX_QUEUE_AGE even with every pause exempted.
   */
  prune(now: number, maxAgeMs: number): void {
    let kept = this.past.slice(-MAX_INTERVALS);
    for (;;) {
      const total = kept.reduce((n, [a, b]) => n + (b - a), 0);
      const horizon = now - maxAgeMs - total;
      const next = kept.filter(([, b]) => b >= horizon);
      if (next.length === kept.length) break;
      kept = next;
    }
    if (kept.length === this.past.length) return;
    this.past = kept;
    this.save();
  }
}
