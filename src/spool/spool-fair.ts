/**
 * The fair lease: `lease(max)` hands out due messages in weighted fair order across tenants instead of
 * oldest due first across all of them, so one tenant's backlog of 100 000 messages does not stand in front
 * of another tenant's single message.
 *
 * - Each tenant with leasable messages is a queue of its own: its due messages oldest due first, read a page
 *   at a time from the partial index `messages_tenant_due` (tenant, due_at), keyset-paged by (due_at, rowid), so a lease
 *   reads only the rows it hands out plus the few it skips (leased, pinned, held back, or behind their
 *   predecessor in an ordered group); no scan of the backlog. The tenants with something due, and the
 *   earliest due time of each, come from a skip scan of the same index (two seeks per tenant); a tenant's
 *   rows are read only when the fair order reaches it, so a lease of one message reads about one page.
 * - Across tenants the order is start-time fair queuing (fair-clock.ts), by recipients, with each message's
 *   stored weight (TENANT_WEIGHTS of its tenant's priority when it was accepted): while several tenants have
 *   mail due, each gets leases in proportion to its weight; a tenant that had nothing waiting is served
 *   next. The clock lives in memory (after a restart every tenant starts even).
 * - The durability rules of spool.ts are those of spool-delivery.ts: a message is leased at most once until
 *   settled or released, and an ordered group's message is not leased while its predecessor waits.
 */
import type { QueuedMessage } from './spool';
import type { SpoolContext } from './spool-context';
import { isBlocked } from './spool-group';
import { parseReception, type MessageRow } from './spool-schema';
import type { StoredMessageState } from '../types';

type LeaseRow = Pick<
  MessageRow,
  | 'id'
  | 'mail_from'
  | 'reception'
  | 'received_at'
  | 'size'
  | 'attempts'
  | 'due_at'
  | 'state'
  | 'held_ms'
  | 'pending_recipients'
  | 'tenant'
  | 'tenant_weight'
> & { seq: number };

/** One tenant's due messages, oldest due first, a page at a time; `head` is the next leasable one. */
class TenantQueue {
  private page: LeaseRow[] = [];
  private index = 0;
  private afterDue = -1;
  private afterSeq = -1;
  private exhausted = false;
  head: LeaseRow | undefined;

  constructor(
    private readonly ctx: SpoolContext,
    readonly tenant: string,
    private readonly now: number,
    private pageSize: number,
  ) {
    this.advance();
  }

  /** Move `head` to the next leasable message (or undefined when the tenant has none due). */
  advance(): void {
    const { leases, stmt } = this.ctx;
    for (;;) {
      if (this.index >= this.page.length) {
        if (this.exhausted) {
          this.head = undefined;
          return;
        }
        this.fetch();
        if (this.page.length === 0) {
          this.head = undefined;
          return;
        }
      }
      const row = this.page[this.index++];
      if (leases.leasable(row.id, this.now) && !isBlocked(stmt, row.id)) {
        this.head = row;
        return;
      }
    }
  }

  private fetch(): void {
    this.page = this.ctx.stmt.tenantDue.all({
      tenant: this.tenant,
      now: this.now,
      afterDue: this.afterDue,
      afterSeq: this.afterSeq,
      limit: this.pageSize,
    }) as LeaseRow[];
    this.index = 0;
    if (this.page.length < this.pageSize) this.exhausted = true;
    const last = this.page[this.page.length - 1];
    if (last) {
      this.afterDue = last.due_at;
      this.afterSeq = last.seq;
    }
    this.pageSize = Math.min(this.pageSize * 2, 1024);
  }
}

/** Up to `max` due, unleased messages in weighted fair order across tenants; each is leased. */
export function leaseFair(ctx: SpoolContext, max: number, now: number): QueuedMessage[] {
  const { stmt, leases, fair } = ctx;
  if (max <= 0) return [];
  // Tenants with something due (from the index alone); a tenant's rows are read only when its turn comes.
  const tenants = stmt.leasableTenants.all() as Array<{ name: string; due: number }>;
  const candidates = tenants.filter((t) => t.due <= now).map((t) => t.name);
  const queues = new Map<string, TenantQueue>();
  // Room for what is leased already (at the front of a tenant's queue) plus a few held-back messages.
  const pageSize = Math.min(1024, max + leases.size + 8);
  const leased: Array<QueuedMessage & { state: StoredMessageState }> = [];
  while (leased.length < max && candidates.length > 0) {
    const tenant = fair.pick(candidates, (x) => x) as string;
    let q = queues.get(tenant);
    if (!q) {
      q = new TenantQueue(ctx, tenant, now, pageSize);
      queues.set(tenant, q);
    }
    const row = q.head;
    if (row === undefined) {
      candidates.splice(candidates.indexOf(tenant), 1); // only leased, held back or blocked messages
      continue;
    }
    const recipients = stmt.pendingRecipients.pluck().all(row.id) as string[];
    if (recipients.length > 0) {
      // (none cannot happen: waiting rows have waiting recipients)
      fair.charge(tenant, recipients.length, row.tenant_weight);
      leased.push({
        id: row.id,
        envelope: { mailFrom: row.mail_from, recipients },
        reception: parseReception(row),
        size: row.size,
        attempts: row.attempts,
        dueAt: row.due_at,
        heldMs: row.held_ms,
        state: row.state,
      });
    }
    q.advance();
  }
  return leased.map(({ state, ...message }) => {
    leases.take(message.id, state);
    return message;
  });
}
