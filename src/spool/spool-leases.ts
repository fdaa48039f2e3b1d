/**
 * What the spool keeps in memory only, never on disk: which messages are leased (a delivery attempt holds
 * them: state `sending`), released messages held back until a due time that could not be written, and
 * messages whose last record/settle failed (its COMMIT may still have reached the disk, so a retry that
 * finds the work done is not an error). After a crash all of it is gone and every unfinished message is
 * due again: that is the at-least-once rule of spool.ts.
 */
import type { MessageId, StoredMessageState } from '../types';

export class LeaseTable {
  /** Leased messages and the state their row had when leased. */
  private readonly leases = new Map<MessageId, StoredMessageState>();
  private readonly notBefore = new Map<MessageId, number>();
  private readonly uncertain = new Set<MessageId>();

  get size(): number {
    return this.leases.size;
  }

  has(id: MessageId): boolean {
    return this.leases.has(id);
  }

  /** Neither leased nor held back at `now`. */
  leasable(id: MessageId, now: number): boolean {
    return !this.leases.has(id) && (this.notBefore.get(id) ?? 0) <= now;
  }

  take(id: MessageId, state: StoredMessageState): void {
    this.leases.set(id, state);
    this.notBefore.delete(id);
  }

  /** End a lease; the message is not leased again before `until` (when given and in the future). */
  release(id: MessageId, until?: number): void {
    this.leases.delete(id);
    if (until !== undefined && until > Date.now()) this.notBefore.set(id, until);
  }

  /** The attempt is over (settled, or the caller erred): forget everything about the message. */
  end(id: MessageId): void {
    this.leases.delete(id);
    this.notBefore.delete(id);
    this.uncertain.delete(id);
  }

  /** Earliest hold-back time of an unleased message, and whether `id` is held back at all. */
  earliestHold(): number | undefined {
    let next: number | undefined;
    for (const [id, at] of this.notBefore) {
      if (!this.leases.has(id) && (next === undefined || at < next)) next = at;
    }
    return next;
  }

  heldBack(id: MessageId): boolean {
    return this.notBefore.has(id);
  }

  markUncertain(id: MessageId): void {
    this.uncertain.add(id);
  }

  settled(id: MessageId): void {
    this.uncertain.delete(id);
  }

  isUncertain(id: MessageId): boolean {
    return this.uncertain.has(id);
  }

  /** Leased messages by the state their row has. */
  byStoredState(): Record<StoredMessageState, number> {
    const counts: Record<StoredMessageState, number> = { queued: 0, deferred: 0, held: 0, failed: 0 };
    for (const state of this.leases.values()) counts[state] += 1;
    return counts;
  }

  clear(): void {
    this.leases.clear();
    this.notBefore.clear();
    this.uncertain.clear();
  }
}
