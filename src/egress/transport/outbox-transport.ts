/**
 * The embedded transport used when AWS_SMTP_HOST is unset: every transaction becomes
 * `<dir>/<queueId>[-n].eml`, the accepted bytes with `X-Envelope-From` / `X-Envelope-To` prepended.
 * The content is written to a temporary file of its own (`.<queueId>.<unique>.tmp`) and fsynced, then
 * hard-linked under the first free final name (`link` never replaces an existing file, so split
 * transactions of one message never collide), the temporary name is removed and the directory is
 * fsynced. A `.eml` is therefore complete from the moment it appears: a reader never sees a reserved
 * or half-written one, and a crash leaves at most a `.tmp` file. All recipients 'delivered'.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from '../../observability/logger';
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

  /** Links the finished `tmp` under the first free name `<id>.eml`, `<id>-1.eml`, ... */
  private async publish(tmp: string, safe: string): Promise<string> {
    for (let n = 0; n < 10_000; n++) {
      const file = path.join(this.dir, `${safe}${n ? `-${n}` : ''}.eml`);
      try {
        await fs.promises.link(tmp, file);
        return file;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
    }
    throw new Error(`outbox: no free file name for ${safe}`);
  }

  async send(tx: Transaction): Promise<RecipientResult[]> {
    let tmp: string | undefined;
    try {
      await this.ensureDir();
      const safe = tx.id.replace(/[^A-Za-z0-9._-]/g, '_');
      tmp = path.join(this.dir, `.${safe}.${crypto.randomBytes(6).toString('hex')}.tmp`);
      const handle = await fs.promises.open(tmp, 'wx');
      try {
        const header =
          `X-Envelope-From: <${headerValue(tx.mailFrom)}>\r\n` +
          `X-Envelope-To: ${tx.recipients.map((r) => `<${headerValue(r)}>`).join(', ')}\r\n`;
        await handle.write(header);
        for await (const chunk of tx.body()) await handle.write(chunk as Buffer);
        await handle.sync();
      } finally {
        await handle.close();
      }
      const file = await this.publish(tmp, safe);
      await fs.promises.rm(tmp, { force: true });
      tmp = undefined;
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
      if (tmp) await fs.promises.rm(tmp, { force: true }).catch(() => undefined);
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
