/**
 * A counting semaphore served in arrival order. Admission uses it for the connection slots (one per
 * pooled upstream connection: a transaction takes a slot before its tokens, so tokens are spent only when
 * a connection is free to use them at once) and, with one slot, for the turn of asking for tokens.
 */
export class SendSlots {
  private free: number;
  private readonly waiters: Array<() => void> = [];

  constructor(size: number) {
    this.free = Math.max(1, size);
  }

  /** Wait for a free slot; rejects when `signal` aborts (shutdown). */
  acquire(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(new Error('stopping'));
    if (this.free > 0) {
      this.free--;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const waiter = () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = () => {
        const i = this.waiters.indexOf(waiter);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(new Error('stopping'));
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.free++;
  }
}
