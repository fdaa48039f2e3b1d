/**
 * What the spool keeps in memory only, never on disk: which messages are leased (a delivery attempt holds
 * them: state `sending`), released messages held back until a due time that could not be written, and
 * messages whose last record/settle failed (its COMMIT may still have reached the disk, so a retry that
 * finds the work done is not an error), and messages an operator's queue action has pinned (not leased
 * until the action is written; the action waits for a lease in progress to end). After a crash all of it is gone and every unfinished message is
 * due again: that is the at-least-once rule of spool.ts.
 */
import type { MessageId, StoredMessageState } from '../types';

export class LeaseTable {
  /** Leased messages and the state their row had when leased. */
  private readonly leases = new Map<MessageId, StoredMessageState>();
  private readonly notBefore = new Map<MessageId, number>();
  private readonly uncertain = new Set<MessageId>();
  /** Pinned by queue actions in progress (a count: two actions may pin one message). */
  private readonly pinned = new Map<MessageId, number>();
  private readonly endWaiters = new Map<MessageId, Array<() => void>>();

  get size(): number {
    return this.leases.size;
  }

  has(id: MessageId): boolean {
    return this.leases.has(id);
  }

  /** Neither leased, pinned nor held back at `now`. */
  leasable(id: MessageId, now: number): boolean {
    return !this.leases.has(id) && !this.pinned.has(id) && (this.notBefore.get(id) ?? 0) <= now;
  }

  take(id: MessageId, state: StoredMessageState): void {
    this.leases.set(id, state);
    this.notBefore.delete(id);
  }

  /** End a lease; the message is not leased again before `until` (when given and in the future). */
  release(id: MessageId, until?: number): void {
    this.leases.delete(id);
    if (until !== undefined && until > Date.now()) this.notBefore.set(id, until);
    this.wakeEnd(id);
  }

  /** The attempt is over (settled, or the caller erred): forget everything about the message. */
  end(id: MessageId): void {
    this.leases.delete(id);
    this.notBefore.delete(id);
    this.uncertain.delete(id);
    this.wakeEnd(id);
  }

  /** A queue action will change the message: never lease it until unpinned. */
  pin(id: MessageId): void {
    this.pinned.set(id, (this.pinned.get(id) ?? 0) + 1);
  }

  unpin(id: MessageId): void {
    const n = (this.pinned.get(id) ?? 1) - 1;
    if (n > 0) this.pinned.set(id, n);
    else this.pinned.delete(id);
  }

  isPinned(id: MessageId): boolean {
    return this.pinned.has(id);
  }

  /** Forget a hold-back time (a queue action made the message due now). */
  forgetHold(id: MessageId): void {
    this.notBefore.delete(id);
  }

  /** Resolves once `id` is not leased (at once when it is not), or false after `timeoutMs`. */
  whenUnleased(id: MessageId, timeoutMs: number): Promise<boolean> {
    if (!this.leases.has(id)) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        const list = this.endWaiters.get(id);
        if (list) list.splice(list.indexOf(wake), 1);
        resolve(false);
      }, timeoutMs);
      const wake = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      this.endWaiters.set(id, [...(this.endWaiters.get(id) ?? []), wake]);
    });
  }

  private wakeEnd(id: MessageId): void {
    const list = this.endWaiters.get(id);
    if (!list) return;
    this.endWaiters.delete(id);
    for (const wake of list) wake();
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
    return this.notBefore.has(id) || this.pinned.has(id);
  }

  /** Leased message ids (the `sending` state). */
  leasedIds(): MessageId[] {
    return [...this.leases.keys()];
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
    const ids = [...this.endWaiters.keys()];
    this.leases.clear();
    this.notBefore.clear();
    this.uncertain.clear();
    for (const id of ids) this.wakeEnd(id);
  }
}
