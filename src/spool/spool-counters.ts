/**
 * The spool's counters, kept in memory so `counts()` (the queue gauges, /readyz, the queue tool) costs one
 * indexed query: messages by stored state, and recipients still to be delivered. Loaded from the database
 * when the spool opens (spool-maintenance.ts), then changed only by the `onCommit` bookkeeping of a write,
 * i.e. only once that write is durable (group-commit.ts), so they never count what a crash would undo.
 */
import type { StoredMessageState } from '../types';
import type { SpoolCounts } from './spool';
import type { LeaseTable } from './spool-leases';
import type { SpoolStatements, StateCountRow } from './spool-schema';

export type StateCounts = Record<StoredMessageState, number>;

export class SpoolCounters {
  /** Messages by stored state. */
  readonly byState: StateCounts = { queued: 0, deferred: 0, held: 0, failed: 0 };
  /** Recipients still to be delivered (of messages not failed). */
  pendingRecipients = 0;

  /** Recount from the rows (at open). */
  load(stmt: SpoolStatements): void {
    this.pendingRecipients = 0;
    for (const row of stmt.stateCounts.all() as StateCountRow[]) {
      this.byState[row.state] = row.messages;
      if (row.state !== 'failed') this.pendingRecipients += row.recipients;
    }
  }

  /** The counts by state (src/types.ts): a leased message counts as `sending`, not as its stored state. */
  counts(leases: LeaseTable, oldestReceivedAt: number | undefined): SpoolCounts {
    const sending = leases.byStoredState();
    const { queued, deferred, held, failed } = this.byState;
    return {
      pending: queued + deferred + held,
      queued: queued - sending.queued,
      sending: leases.size,
      deferred: deferred - sending.deferred,
      held,
      failed,
      pendingRecipients: this.pendingRecipients,
      oldestReceivedAt,
    };
  }
}
