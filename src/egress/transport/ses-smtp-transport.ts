/**
 * SES over SMTP: a nodemailer connection pool (STARTTLS required on 587, implicit TLS on 465, certificate
 * verification on, AUTH with the SES SMTP credentials). Each `send` is one SMTP transaction with an
 * explicit envelope and the spooled body passed as `raw`, so headers go out exactly as accepted;
 * nodemailer's DataStream dot-stuffs and turns bare CR / LF into CRLF (no SMTP smuggling upstream).
 *
 * The envelope goes out byte for byte as accepted: addresses are passed as objects, never as strings
 * nodemailer would parse again (see nodemailer-envelope.ts), and an address whose upstream form would
 * differ anyway (only possible for a message spooled by an older version with laxer address rules) is
 * not sent: it fails permanently with `553 5.1.3` / `553 5.1.7`, so one accepted recipient is always
 * one RCPT of exactly that address (and one token), never two and never another mailbox.
 *
 * Connections are recycled: nodemailer's pool closes a connection after `maxMessages`, and as it has no
 * age limit the whole pool is replaced once it is older than `maxConnectionAgeMs` (the old one finishes
 * its in-flight transactions, then closes). nodemailer's own requeue-on-close is disabled: a message is
 * never silently resent outside the rate limiter; the dispatcher decides about retries.
 *
 * Every outcome is classified per recipient; `send` never throws for an SMTP or network outcome.
 *
 * With a configuration set (the message's tenant's, else SES_CONFIGURATION_SET) the `X-SES-CONFIGURATION-SET`
 * header is prepended on the way out, and with the tenant's tags `X-SES-MESSAGE-TAGS` (ses-headers.ts),
 * unless the message carries one.
 */
import net from 'node:net';
import nodemailer, { type Transporter } from 'nodemailer';
import type SMTPPool from 'nodemailer/lib/smtp-pool';
import type { Readable } from 'node:stream';
import type { Logger } from '../../observability/logger';
import type { ReplyClass } from '../../types';
import { envelopeOf, upstreamEnvelope, upstreamForm } from './nodemailer-envelope';
import {
  CONFIGURATION_SET_HEADER,
  MESSAGE_TAGS_HEADER,
  messageTagsValue,
  prependHeadersUnlessPresent,
} from './ses-headers';
import type { RecipientResult, Transaction, Transport, UpstreamSignal } from './transport';

export interface SesSmtpTransportOptions {
  host: string;
  port: number;
  /** Implicit TLS (465); otherwise STARTTLS is required. */
  secure: boolean;
  username: string;
  password: string;
  poolSize: number;
  maxMessagesPerConnection: number;
  maxConnectionAgeMs: number;
  connectionTimeoutMs: number;
  /** Idle-socket timeout during a transaction (default max(connectionTimeoutMs, 60 s)). */
  socketTimeoutMs?: number;
  /** Extra trusted CA for tests (production uses NODE_EXTRA_CA_CERTS). */
  tls?: { ca?: Buffer };
  /** Default configuration set (SES_CONFIGURATION_SET), named in an X-SES-CONFIGURATION-SET header. */
  configurationSet?: string;
  logger: Logger;
}

interface SmtpError extends Error {
  code?: string;
  responseCode?: number;
  response?: string;
  rejected?: string[];
  rejectedErrors?: SmtpError[];
  recipient?: string;
}

interface SendInfo {
  accepted?: Array<string | { address: string }>;
  rejected?: Array<string | { address: string }>;
  rejectedErrors?: SmtpError[];
  response?: string;
}

type PoolTransporter = Transporter<SMTPPool.SentMessageInfo>;

interface PoolGeneration {
  transporter: PoolTransporter;
  createdAt: number;
  inFlight: number;
  retired: boolean;
}

const AUTH_CODES = new Set([530, 534, 535, 538]);

/** Class of an SMTP reply code from SES. */
export function classifyCode(code: number, text: string): ReplyClass {
  if (code >= 200 && code < 300) return 'delivered';
  // "454 Throttling failure: Daily message quota exceeded" is not a rate problem: slowing down does not
  // help, so it follows the normal retry schedule.
  if (code === 454 && /quota/i.test(text)) return 'transient';
  if (code === 454 && (/throttl/i.test(text) || !/auth/i.test(text))) return 'throttled';
  if (AUTH_CODES.has(code)) return 'transient'; // our configuration, never the message's fault
  if (code >= 400 && code < 500) return 'transient';
  if (code >= 500) return 'permanent';
  return 'transient';
}

/**
 * The account-wide condition behind an SMTP reply, if any. SES developer guide, "Errors related to the
 * sending quotas": a spent daily quota is `454 Throttling failure: Daily message quota exceeded`.
 */
export function signalOf(code: number, text: string): UpstreamSignal | undefined {
  return code === 454 && /quota/i.test(text) ? 'daily-quota-exceeded' : undefined;
}

/** Marks the results whose reply carries an account-wide signal. */
function withSignals(results: RecipientResult[]): RecipientResult[] {
  for (const r of results) {
    const signal = signalOf(r.code, r.reply);
    if (signal) r.signal = signal;
  }
  return results;
}

const addressOf = (a: string | { address: string }) => (typeof a === 'string' ? a : a.address);
const codeOf = (text: string | undefined, fallback: number) => {
  const m = /^(\d{3})[ -]/.exec(text ?? '');
  return m ? Number(m[1]) : fallback;
};

export class SesSmtpTransport implements Transport {
  readonly name: string;
  private readonly options: SesSmtpTransportOptions;
  private readonly logger: Logger;
  private current: PoolGeneration | undefined;
  private readonly retiring = new Set<PoolGeneration>();
  private lastNetworkFailure = false;
  private closed = false;
  private generations = 0;

  constructor(options: SesSmtpTransportOptions) {
    this.options = options;
    this.logger = options.logger;
    this.name = `${options.host}:${options.port}`;
  }

  /** How many pools were created so far (1 + recycles by age), for tests and logs. */
  get poolGenerations(): number {
    return this.generations;
  }

  private createPool(): PoolGeneration {
    const o = this.options;
    const transporter = nodemailer.createTransport({
      pool: true,
      host: o.host,
      port: o.port,
      secure: o.secure,
      requireTLS: !o.secure,
      auth: { user: o.username, pass: o.password },
      maxConnections: o.poolSize,
      maxMessages: o.maxMessagesPerConnection,
      maxRequeues: 0,
      connectionTimeout: o.connectionTimeoutMs,
      greetingTimeout: o.connectionTimeoutMs,
      socketTimeout: o.socketTimeoutMs ?? Math.max(o.connectionTimeoutMs, 60_000),
      tls: {
        rejectUnauthorized: true,
        minVersion: 'TLSv1.2',
        ...(net.isIP(o.host) ? {} : { servername: o.host }),
        ...(o.tls?.ca ? { ca: o.tls.ca } : {}),
      },
      logger: false,
      debug: false,
    } as SMTPPool.Options);
    this.generations++;
    return { transporter, createdAt: Date.now(), inFlight: 0, retired: false };
  }

  /** The pool to use now; replaces it when older than maxConnectionAgeMs. */
  private pool(): PoolGeneration {
    const now = Date.now();
    if (this.current && now - this.current.createdAt >= this.options.maxConnectionAgeMs) {
      const old = this.current;
      old.retired = true;
      this.retiring.add(old);
      this.current = undefined;
      this.maybeCloseRetired(old);
      this.logger.debug(
        { event: 'transport:recycle', target: this.name },
        'recycling SES connection pool by age',
      );
    }
    if (!this.current) this.current = this.createPool();
    return this.current;
  }

  private maybeCloseRetired(gen: PoolGeneration): void {
    if (gen.retired && gen.inFlight === 0) {
      this.retiring.delete(gen);
      gen.transporter.close();
    }
  }

  async send(tx: Transaction): Promise<RecipientResult[]> {
    if (this.closed) return this.all(tx, 'transient', 0, 'transport closed');
    const refused = this.unsendable(tx);
    if (refused.size === 0) return this.sendTransaction(tx);
    const rest = tx.recipients.filter((r) => !refused.has(r));
    const sent = rest.length > 0 ? await this.sendTransaction({ ...tx, recipients: rest }) : [];
    const byRecipient = new Map(sent.map((r) => [r.recipient, r]));
    return tx.recipients.map(
      (recipient) => refused.get(recipient) ?? byRecipient.get(recipient) ?? this.missing(recipient),
    );
  }

  /**
   * Recipients nodemailer would not send byte for byte (all of them when the sender is such), each with
   * its permanent result. Empty for every address src/ingress/address-syntax.ts accepts.
   */
  private unsendable(tx: Transaction): Map<string, RecipientResult> {
    const refused = new Map<string, RecipientResult>();
    const whole = upstreamEnvelope(tx.mailFrom, tx.recipients);
    const same = whole.from === tx.mailFrom && whole.to.length === tx.recipients.length;
    if (same && whole.to.every((r, i) => r === tx.recipients[i])) return refused;
    const fail = (recipient: string, reply: string) =>
      refused.set(recipient, { recipient, class: 'permanent', code: 553, reply });
    const from = tx.mailFrom ? upstreamForm(tx.mailFrom) : '';
    if (from !== tx.mailFrom) {
      const reply = `553 5.1.7 not sent: sender <${tx.mailFrom}> would go upstream as <${from}>`;
      for (const r of tx.recipients) fail(r, reply);
    } else {
      for (const r of tx.recipients) {
        const up = upstreamForm(r);
        if (up !== r) fail(r, `553 5.1.3 not sent: recipient <${r}> would go upstream as <${up}>`);
      }
    }
    if (refused.size > 0) {
      this.logger.error(
        { event: 'transport:unsendable-address', queueId: tx.id, recipients: [...refused.keys()] },
        'addresses that cannot be sent byte for byte: failed, not rewritten',
      );
    }
    return refused;
  }

  private missing(recipient: string): RecipientResult {
    return { recipient, class: 'transient', code: 0, reply: 'no outcome from the transport' };
  }

  private async sendTransaction(tx: Transaction): Promise<RecipientResult[]> {
    let body: Readable;
    try {
      body = tx.body();
    } catch (err) {
      this.logger.error({ err, queueId: tx.id }, 'cannot open the spooled body');
      return this.all(tx, 'transient', 0, `spooled body unreadable: ${(err as Error).message}`);
    }
    let bodyError: Error | undefined;
    body.once('error', (err) => (bodyError = err));
    const set = tx.configurationSet ?? this.options.configurationSet;
    const tags = messageTagsValue(tx.tags);
    const fields: Array<[string, string]> = [];
    if (set) fields.push([CONFIGURATION_SET_HEADER, set]);
    if (tags) fields.push([MESSAGE_TAGS_HEADER, tags]);
    // A tenant's configuration set and tags are enforced (the message's own header replaced), as the API's
    // ConfigurationSetName and EmailTags are; the default set is not.
    const enforced = [
      ...(tx.configurationSet ? [CONFIGURATION_SET_HEADER] : []),
      ...(tags ? [MESSAGE_TAGS_HEADER] : []),
    ];
    const raw = fields.length ? prependHeadersUnlessPresent(body, fields, enforced) : body;
    // The wrapper ends with the body's error, which the listener above already records.
    if (raw !== body) raw.on('error', () => undefined);
    const gen = this.pool();
    gen.inFlight++;
    try {
      const info = (await gen.transporter.sendMail({
        envelope: envelopeOf(tx.mailFrom, tx.recipients),
        raw,
      })) as SendInfo;
      this.lastNetworkFailure = false;
      return withSignals(this.fromInfo(tx, info));
    } catch (e) {
      const err = e as SmtpError;
      if (bodyError) {
        this.logger.error({ err: bodyError, queueId: tx.id }, 'cannot read the spooled body');
        return this.all(tx, 'transient', 0, `spooled body unreadable: ${bodyError.message}`);
      }
      return withSignals(this.fromError(tx, err));
    } finally {
      if (raw !== body) raw.destroy();
      body.destroy();
      gen.inFlight--;
      this.maybeCloseRetired(gen);
    }
  }

  private all(tx: Transaction, cls: ReplyClass, code: number, reply: string): RecipientResult[] {
    return tx.recipients.map((recipient) => ({ recipient, class: cls, code, reply }));
  }

  private fromInfo(tx: Transaction, info: SendInfo): RecipientResult[] {
    const accepted = new Set((info.accepted ?? []).map((a) => addressOf(a).toLowerCase()));
    const rejected = new Map<string, SmtpError>();
    for (const r of info.rejectedErrors ?? []) if (r.recipient) rejected.set(r.recipient.toLowerCase(), r);
    const response = info.response ?? '250 Ok';
    const okCode = codeOf(response, 250);
    return tx.recipients.map((recipient) => {
      const key = recipient.toLowerCase();
      const rej = rejected.get(key);
      if (rej) return this.perRecipient(recipient, rej);
      if (accepted.has(key)) return { recipient, class: 'delivered' as const, code: okCode, reply: response };
      // Neither listed (should not happen): nodemailer only reports accepted ones on success.
      const listedRejected = (info.rejected ?? []).some((a) => addressOf(a).toLowerCase() === key);
      return listedRejected
        ? { recipient, class: 'permanent' as const, code: 550, reply: 'rejected by upstream' }
        : { recipient, class: 'delivered' as const, code: okCode, reply: response };
    });
  }

  private perRecipient(recipient: string, err: SmtpError): RecipientResult {
    const code = err.responseCode ?? 0;
    const reply = err.response ?? err.message;
    return { recipient, class: code ? classifyCode(code, reply) : 'transient', code, reply };
  }

  private fromError(tx: Transaction, err: SmtpError): RecipientResult[] {
    const code = err.responseCode ?? 0;
    const reply = err.response ?? err.message ?? String(err);
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
        'SES connection failed',
      );
      return this.all(tx, 'transient', 0, `${err.code ?? 'ERROR'}: ${err.message}`);
    }
    this.lastNetworkFailure = false;
    if (err.code === 'EAUTH' || AUTH_CODES.has(code)) {
      this.logger.error(
        { event: 'transport:auth-failed', target: this.name, code, reply, queueId: tx.id },
        'SES refused our SMTP credentials: check AWS_SMTP_USERNAME / AWS_SMTP_PASSWORD; mail stays queued',
      );
      return this.all(tx, 'transient', code, reply);
    }
    // All recipients refused at RCPT: per-recipient replies.
    if (err.rejectedErrors?.length) {
      const byRcpt = new Map(err.rejectedErrors.map((r) => [(r.recipient ?? '').toLowerCase(), r]));
      return tx.recipients.map((recipient) => {
        const r = byRcpt.get(recipient.toLowerCase());
        return r
          ? this.perRecipient(recipient, r)
          : { recipient, class: classifyCode(code, reply), code, reply };
      });
    }
    return this.all(tx, classifyCode(code, reply), code, reply);
  }

  healthy(): boolean {
    return !this.closed && !this.lastNetworkFailure;
  }

  async close(): Promise<void> {
    this.closed = true;
    const gens = [...this.retiring, ...(this.current ? [this.current] : [])];
    this.current = undefined;
    this.retiring.clear();
    for (const g of gens) g.transporter.close();
  }
}
