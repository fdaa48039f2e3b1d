/**
 * A tenant's own rate_limit as a bucket one second deep (at least one recipient), in the form of GCRA
 * (the generic cell rate algorithm): one number per tenant, the time its bucket is full again (`tat`).
 * The bucket holds cap - max(0, tat - now) / interval recipients, cap = max(1, rate), interval = 1000 / rate
 * ms per recipient; a take of n fits when that is >= n. It starts full (an unknown tenant has tat 0).
 * The same arithmetic runs in Lua for Redis (redis-rate-script.ts, op `take` with a tenant).
 */

/** Milliseconds until a take of `n` recipients fits the bucket (0: it fits now). */
export function tenantWait(tat: number, rate: number, n: number, now: number): number {
  const interval = 1000 / rate;
  const cap = Math.max(1, rate);
  const over = Math.max(0, tat - now) - (cap - Math.min(n, cap)) * interval;
  return over > 1e-9 ? over : 0;
}

/** The tenant's `tat` after a take of `n` recipients granted at `now`. */
export function tenantTatAfter(tat: number, rate: number, n: number, now: number): number {
  return Math.max(tat, now) + (n * 1000) / rate;
}

/** The largest transaction for a tenant limited to `rate` recipients/s (the bucket's depth). */
export function tenantChunk(rate: number | undefined, chunk: number): number {
  if (rate === undefined || !(rate > 0)) return chunk;
  return Math.max(1, Math.min(chunk, Math.floor(Math.max(1, rate))));
}
