/**
 * What a fake SES saw of a drained backlog: recipients accepted and refused (454, whole transactions as
 * SES does), the achieved rate over the drain and over its second half, and the busiest second, all on
 * the fake's own timestamps (its 250 or 454 at the end of DATA).
 */
import type { FakeSes } from '../../test/helpers/fake-ses';
import { maxInWindow, type TimedCount } from '../../test/helpers/windows';

export interface DrainStats {
  /** Recipients in the backlog. */
  expected: number;
  /** Recipients SES accepted (each once, unless `duplicates`). */
  accepted: number;
  /** Recipient attempts refused with 454 (a recipient refused twice counts twice). */
  refused: number;
  /** refused / (accepted + refused): the share of recipients SES saw that it refused. */
  refusedShare: number;
  /** Of `refused`, those in the first 2 s after the first arrival (start-up clump). */
  refusedEarly: number;
  /** First arrival (accepted or refused) to last acceptance, seconds. */
  seconds: number;
  /**
   * accepted / (seconds + capacity / rate): SES's bucket starts full, so at most capacity + rate x seconds
   * can pass in a drain of `seconds`; a sender that keeps SES's bucket busy scores the true rate, one that
   * leaves it idle less (and never below zero, however little it sent).
   */
  achieved: number;
  /** Recipients accepted in the second half of the drain / its duration (convergence). */
  secondHalf: number;
  /** Most recipients accepted in any 1-second window, and arrivals (accepted + refused) likewise. */
  max1sAccepted: number;
  max1sArrivals: number;
  /** Recipients accepted more than once. */
  duplicates: number;
}

/** Stats over the fake's record; `include` picks the transactions that belong to this load. */
export function drainStats(
  ses: FakeSes,
  options: {
    expected: number;
    /** SES's bucket (recipients) and refill rate (recipients/s). */
    capacity: number;
    rate: number;
    include?: (mailFrom: string) => boolean;
  },
): DrainStats {
  const include = options.include ?? (() => true);
  const accepted: TimedCount[] = ses.messages
    .filter((m) => include(m.mailFrom))
    .map((m) => ({ at: m.at, n: m.recipients.length }));
  // Refusals carry no envelope sender: with a filter they cannot be attributed, so only unfiltered counts.
  const refused: TimedCount[] = options.include
    ? []
    : ses.refusals.map((r) => ({ at: r.at, n: r.recipients }));
  const sum = (xs: TimedCount[]) => xs.reduce((n, x) => n + x.n, 0);
  const nAccepted = sum(accepted);
  const nRefused = sum(refused);
  const unique = new Set(
    ses.messages.filter((m) => include(m.mailFrom)).flatMap((m) => m.recipients.map((r) => r.toLowerCase())),
  );
  const first = Math.min(...accepted.map((x) => x.at), ...refused.map((x) => x.at));
  const last = Math.max(...accepted.map((x) => x.at));
  const seconds = accepted.length ? (last - first) / 1000 : NaN;
  const mid = (first + last) / 2;
  const secondHalfCount = sum(accepted.filter((x) => x.at > mid));
  return {
    expected: options.expected,
    accepted: nAccepted,
    refused: nRefused,
    refusedShare: nRefused / Math.max(1, nAccepted + nRefused),
    refusedEarly: sum(refused.filter((x) => x.at - first < 2000)),
    seconds,
    achieved: nAccepted / (seconds + options.capacity / options.rate),
    secondHalf: secondHalfCount / ((last - mid) / 1000),
    max1sAccepted: maxInWindow(accepted, 1000),
    max1sArrivals: maxInWindow([...accepted, ...refused], 1000),
    duplicates: nAccepted - unique.size,
  };
}

/** Resolve once SES accepted `expected` recipients (counting `include`d transactions), or at `deadline`. */
export async function waitForDrain(
  ses: FakeSes,
  expected: number,
  deadline: number,
  include: (mailFrom: string) => boolean = () => true,
): Promise<boolean> {
  const count = () => ses.messages.reduce((n, m) => (include(m.mailFrom) ? n + m.recipients.length : n), 0);
  while (Date.now() < deadline) {
    if (count() >= expected) return true;
    await new Promise((r) => setTimeout(r, 200));
  }
  return count() >= expected;
}
