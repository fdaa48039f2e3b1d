/**
 * What the parts of SqliteSpool share: the open database and its statements, the group committer, the
 * in-memory leases, counters and notification ledger. SqliteSpool (sqlite-spool.ts) builds one at open and
 * hands it to the functions that do the work: storing (spool-store.ts), delivery (spool-delivery.ts) and
 * maintenance (spool-maintenance.ts). Nothing here writes; it is only the wiring.
 */
import type Database from 'better-sqlite3';
import type { Logger } from '../observability/logger';
import type { FairClock } from './fair-clock';
import type { GroupCommitter } from './group-commit';
import type { SpoolCounters } from './spool-counters';
import type { LeaseTable } from './spool-leases';
import type { NotificationLedger } from './spool-notifications';
import type { SpoolStatements } from './spool-schema';
import type { WriteHealth } from './write-health';

export interface SpoolContext {
  readonly db: Database.Database;
  readonly stmt: SpoolStatements;
  /** Every write goes through it: one transaction per batch, resolved after COMMIT. */
  readonly committer: GroupCommitter;
  /** `<dir>/bodies`: the body files of large messages. */
  readonly bodiesDir: string;
  /** Bodies up to this size are stored inside the database. */
  readonly inlineMax: number;
  readonly logger: Logger;
  readonly writeHealth: WriteHealth;
  readonly leases: LeaseTable;
  readonly ledger: NotificationLedger;
  readonly counters: SpoolCounters;
  /** The fair lease's virtual clock across tenants (memory only). */
  readonly fair: FairClock;
  /** True from the moment `close()` began. */
  isClosed(): boolean;
  /** Tell the notifier that a commit made a notification owed. */
  notificationOwed(): void;
}
