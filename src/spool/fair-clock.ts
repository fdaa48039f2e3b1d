/**
 * Weighted fair order across tenants: start-time fair queuing (Goyal, Vin and Cheng, SIGCOMM 1996) on a
 * virtual clock, the scheduler of the fair lease (spool-fair.ts) and of admission's waiters
 * (egress/rate/fair-turn.ts).
 *
 * Each tenant has a finish tag. The next unit of a tenant starts at max(virtual time, its finish tag);
 * the unit with the smallest start tag is served next; serving `cost` units at `weight` moves the
 * tenant's finish tag to start + cost / weight and the virtual time to that start. So tenants with work
 * waiting are served in proportion to their weights (by cost: recipients), a tenant that arrives with
 * nothing waiting starts at once (at the virtual time, ahead of every backlogged tenant whose finish tag is
 * ahead of it), and an idle tenant banks nothing (its stale tag is lifted to the virtual time): work
 * conserving, with no credit for idleness. Memory: one number per tenant served recently; tags left
 * behind by the virtual time are forgotten.
 */
export class FairClock {
  private virtual = 0;
  private readonly finish = new Map<string, number>();
  private served = 0;

  /** The start tag of `tenant`'s next unit. */
  start(tenant: string): number {
    return Math.max(this.virtual, this.finish.get(tenant) ?? 0);
  }

  /** Serve `cost` units of `tenant` at `weight` (> 0); returns their start tag. */
  charge(tenant: string, cost: number, weight: number): number {
    const start = this.start(tenant);
    this.finish.set(tenant, start + Math.max(0, cost) / Math.max(1e-9, weight));
    this.virtual = start;
    if (++this.served % 256 === 0) this.forgetIdle();
    return start;
  }

  /** Of several tenants, the one to serve next (smallest start tag; ties: the first given). */
  pick<T>(candidates: T[], tenantOf: (c: T) => string): T | undefined {
    let best: T | undefined;
    let bestStart = Infinity;
    for (const c of candidates) {
      const s = this.start(tenantOf(c));
      if (s < bestStart) {
        best = c;
        bestStart = s;
      }
    }
    return best;
  }

  /** Tenants whose tag the virtual time has passed start at the virtual time anyway: drop them. */
  private forgetIdle(): void {
    for (const [tenant, tag] of this.finish) if (tag <= this.virtual) this.finish.delete(tenant);
  }

  /** Tenants with a tag ahead of the virtual time (tests, and the bound on memory). */
  get size(): number {
    return this.finish.size;
  }
}
