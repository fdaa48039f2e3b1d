/**
 * Sliding-window counting shared by the rate tests and benches: the most recipients seen within any window
 * [t, t + ms) of a list of timestamped counts (limiter grants or upstream acceptances).
 */
export interface TimedCount {
  at: number;
  n: number;
}

export function busiestWindow(events: TimedCount[], ms: number): { max: number; at: number } {
  const sorted = [...events].sort((a, b) => a.at - b.at);
  let best = { max: 0, at: 0 };
  let sum = 0;
  let lo = 0;
  for (let hi = 0; hi < sorted.length; hi++) {
    sum += sorted[hi].n;
    while (sorted[hi].at - sorted[lo].at >= ms) sum -= sorted[lo++].n;
    if (sum > best.max) best = { max: sum, at: sorted[lo].at };
  }
  return best;
}

export function maxInWindow(events: TimedCount[], ms: number): number {
  return busiestWindow(events, ms).max;
}
