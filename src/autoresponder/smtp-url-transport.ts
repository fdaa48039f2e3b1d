/**
 * The second upstream for `send_method: "SMTP"` replies (AUTORESPONDER_SMTP_URL, e.g. a Postfix that may
 * send what SES refuses, such as executables): nodemailer to that URL (`smtp://host:25`,
 * `smtps://user:password@host:465`, nodemailer's URL options such as `?tls.rejectUnauthorized=false`).
 * Like every transport it never throws: each recipient gets a class (SES's classification, which is plain
 * RFC 5321 for any server: 2xx delivered, 4xx transient, 5xx permanent).
 */
import { envelopeOf } from '../egress/transport/nodemailer-envelope';
import nodemailer, { type Transporter } from 'nodemailer';
import type SMTPPool from 'nodemailer/lib/smtp-pool';
import type { Readable } from 'node:stream';
import type { Logger } from '../observability/logger';
import { classifyCode } from '../egress/transport/ses-smtp-transport';
import type { RecipientResult, Transaction, Transport } from '../egress/transport/transport';

interface SmtpError extends Error {
  code?: string;
  responseCode?: number;
  response?: string;
  rejectedErrors?: Array<{ recipient?: string; responseCode?: number; response?: string }>;
}

export class SmtpUrlTransport implements Transport {
  readonly name: string;
  private readonly transporter: Transporter<SMTPPool.SentMessageInfo>;
  private lastNetworkFailure = false;

  constructor(
    url: string,
    private readonly logger: Logger,
    options: { connectionTimeoutMs?: number } = {},
  ) {
    const u = new URL(url);
    this.name = `${u.protocol}//${u.hostname}${u.port ? `:${u.port}` : ''}`; // never the credentials
    const timeout = options.connectionTimeoutMs ?? 30_000;
    this.transporter = nodemailer.createTransport({
      url,
      pool: true,
      maxConnections: 2,
      maxMessages: 100,
      maxRequeues: 0,
      connectionTimeout: timeout,
      greetingTimeout: timeout,
      socketTimeout: Math.max(timeout, 60_000),
      logger: false,
      debug: false,
    } as SMTPPool.Options);
  }

  async send(tx: Transaction): Promise<RecipientResult[]> {
    const all = (cls: RecipientResult['class'], code: number, reply: string) =>
      tx.recipients.map((recipient) => ({ recipient, class: cls, code, reply }));
    let body: Readable;
    try {
      body = tx.body();
    } catch (err) {
      return all('transient', 0, `spooled body unreadable: ${(err as Error).message}`);
    }
    try {
      const info = (await this.transporter.sendMail({
        // Address objects, never strings nodemailer would parse again (nodemailer-envelope.ts).
        envelope: envelopeOf(tx.mailFrom, tx.recipients),
        raw: body,
      })) as { accepted?: unknown[]; response?: string };
      this.lastNetworkFailure = false;
      const response = info.response ?? '250 Ok';
      const code = Number(/^(\d{3})/.exec(response)?.[1] ?? 250);
      return all('delivered', code, response);
    } catch (e) {
      const err = e as SmtpError;
      const code = err.responseCode ?? 0;
      if (!code) {
        this.lastNetworkFailure = true;
        this.logger.warn(
          {
            event: 'transport:network-error',
            target: this.name,
            code: err.code,
            err: err.message,
            queueId: tx.id,
          },
          'autoresponder SMTP upstream connection failed',
        );
        return all('transient', 0, `${err.code ?? 'ERROR'}: ${err.message}`);
      }
      this.lastNetworkFailure = false;
      const reply = err.response ?? err.message;
      const byRcpt = new Map((err.rejectedErrors ?? []).map((r) => [(r.recipient ?? '').toLowerCase(), r]));
      return tx.recipients.map((recipient) => {
        const r = byRcpt.get(recipient.toLowerCase());
        const c = r?.responseCode ?? code;
        const text = r?.response ?? reply;
        return { recipient, class: classifyCode(c, text), code: c, reply: text };
      });
    } finally {
      body.destroy();
    }
  }

  healthy(): boolean {
    return !this.lastNetworkFailure;
  }

  async close(): Promise<void> {
    this.transporter.close();
  }
}
