/**
 * An in-memory Spool for ingress tests only: `store` consumes the body fully and keeps it; a body
 * stream error makes `store` reject and nothing is kept. `failWith` makes the next stores fail.
 * The delivery side (lease/settle/...) is minimal.
 */
import { Readable } from 'node:stream';
import { newQueueId } from '../../src/spool/queue-id';
import {
  SpoolWriteError,
  type FailedMessage,
  type QueuedMessage,
  type Spool,
  type SpoolCounts,
  type SpoolHealth,
} from '../../src/spool/spool';
import type { Envelope, MessageId, MessageState, Reception } from '../../src/types';

export interface StoredMessage {
  id: MessageId;
  envelope: Envelope;
  reception: Reception;
  body: Buffer;
}

export class MemorySpool implements Spool {
  readonly messages: StoredMessage[] = [];
  /** Stores that rejected (for assertions). */
  failedStores = 0;
  /** When set, every store rejects with this error after consuming the body. */
  failWith?: Error;
  /** Delay before a store resolves (to hold a transaction in flight). */
  storeDelayMs = 0;
  /** Largest number of body bytes held at once by a store in progress (memory check). */
  maxBuffered = 0;

  async store(
    envelope: Envelope,
    body: Readable,
    reception: Omit<Reception, 'receivedAt'>,
  ): Promise<MessageId> {
    const chunks: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of body) {
        const b = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string);
        chunks.push(b);
        size += b.length;
        if (size > this.maxBuffered) this.maxBuffered = size;
      }
    } catch (err) {
      this.failedStores++;
      throw new SpoolWriteError('body stream failed', err);
    }
    if (this.storeDelayMs) await new Promise((r) => setTimeout(r, this.storeDelayMs));
    if (this.failWith) {
      this.failedStores++;
      throw this.failWith;
    }
    const id = newQueueId();
    this.messages.push({
      id,
      envelope: { mailFrom: envelope.mailFrom, recipients: [...envelope.recipients] },
      reception: { ...reception, receivedAt: Date.now() },
      body: Buffer.concat(chunks, size),
    });
    return id;
  }

  lease(): QueuedMessage[] {
    return [];
  }
  nextDueAt(): number | undefined {
    return undefined;
  }
  openBody(id: MessageId): Readable {
    const m = this.messages.find((x) => x.id === id);
    if (!m) throw new Error(`no message ${id}`);
    return Readable.from([m.body]);
  }
  async record(): Promise<void> {}
  async settle(): Promise<MessageState> {
    return 'delivered';
  }
  release(): void {}
  counts(): SpoolCounts {
    const n = this.messages.length;
    return { pending: n, queued: n, sending: 0, deferred: 0, held: 0, failed: 0, pendingRecipients: 0 };
  }
  listFailed(): FailedMessage[] {
    return [];
  }
  health(): SpoolHealth {
    return { writable: !this.failWith, since: 0 };
  }
  async isWritable(): Promise<boolean> {
    return !this.failWith;
  }
  async close(): Promise<void> {}
}
