/**
 * The embedded transport used when AWS_SMTP_HOST is unset: every transaction becomes
 * `<dir>/<queueId>[-n].eml`, the accepted bytes with `X-Envelope-From` / `X-Envelope-To` prepended,
 * The final name is reserved with an exclusive create (so split transactions of one message never
 * collide); the content goes to `<name>.tmp`, is fsynced and renamed over it, then the directory is
 * fsynced: a crash never leaves a half-written .eml. All recipients 'delivered'.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../observability/logger';
import type { RecipientResult, Transaction, Transport } from './transport';

export interface OutboxTransportOptions {
  dir: string;
  logger?: Logger;
}

/** Header-safe: no CR/LF (an address can never contain them, but never trust). */
const headerValue = (s: string) => s.replace(/[\r\n]+/g, ' ');

export class OutboxTransport implements Transport {
  readonly name: string;
  private readonly dir: string;
  private readonly logger?: Logger;
  private lastOk = true;
  private ready: Promise<void> | undefined;

  constructor(options: OutboxTransportOptions) {
    this.dir = path.resolve(options.dir);
    this.logger = options.logger;
    this.name = `outbox:${this.dir}`;
  }

  private ensureDir(): Promise<void> {
    this.ready ??= fs.promises.mkdir(this.dir, { recursive: true }).then(() => undefined);
    return this.ready;
  }

  /** Claims a free file name `<id>.eml`, `<id>-1.eml`, ... (exclusive create). */
  private async claim(id: string): Promise<{ file: string; handle: fs.promises.FileHandle }> {
    const safe = id.replace(/[^A-Za-z0-9._-]/g, '_');
    for (let n = 0; n < 10_000; n++) {
      const file = path.join(this.dir, `${safe}${n ? `-${n}` : ''}.eml`);
      try {
        // Reserve the final name first so concurrent transactions of one message never collide.
        const handle = await fs.promises.open(file, 'wx');
        return { file, handle };
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
    throw new Error(`outbox: no free file name for ${id}`);
  }

  async send(tx: Transaction): Promise<RecipientResult[]> {
    try {
      await this.ensureDir();
      const reserved = await this.claim(tx.id);
      await reserved.handle.close();
      const file = reserved.file;
      const tmp = `${file}.tmp`;
      const handle = await fs.promises.open(tmp, 'w');
      try {
        const header =
          `X-Envelope-From: <${headerValue(tx.mailFrom)}>\r\n` +
          `X-Envelope-To: ${tx.recipients.map((r) => `<${headerValue(r)}>`).join(', ')}\r\n`;
        await handle.write(header);
        for await (const chunk of tx.body()) await handle.write(chunk as Buffer);
        await handle.sync();
      } catch (err) {
        await handle.close().catch(() => undefined);
        await fs.promises.rm(tmp, { force: true });
        await fs.promises.rm(file, { force: true });
        throw err;
      }
      await handle.close();
      await fs.promises.rename(tmp, file);
      const dirHandle = await fs.promises.open(this.dir, 'r');
      try {
        await dirHandle.sync();
      } finally {
        await dirHandle.close();
      }
      this.lastOk = true;
      const reply = `250 2.0.0 Ok: written to ${path.basename(file)}`;
      return tx.recipients.map((recipient) => ({ recipient, class: 'delivered' as const, code: 250, reply }));
    } catch (err) {
      this.lastOk = false;
      this.logger?.error({ err, queueId: tx.id, dir: this.dir }, 'outbox: cannot write message');
      const reply = `outbox write failed: ${(err as Error).message}`;
      return tx.recipients.map((recipient) => ({ recipient, class: 'transient' as const, code: 0, reply }));
    }
  }

  healthy(): boolean {
    return this.lastOk;
  }

  async close(): Promise<void> {}
}
