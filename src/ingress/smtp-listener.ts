/**
 * The SMTP listener (ingress): smtp-server in front of the spool, composed of
 *
 * - session-policy.ts: who may AUTH, MAIL and RCPT, the envelope checks, the AUTH failure lockout;
 * - message-receiver.ts: DATA streamed into the spool (normalisation, size, header check, 250 after fsync);
 * - smtp-server-internals.ts: every touch of smtp-server's private API (connections, replies, raw sockets,
 *   the greeting delay), checked against the pinned version at start.
 *
 * This file wires them to smtp-server's options and handlers, keeps the sessions gauge, and shuts down:
 * close(graceMs) lets transactions in DATA finish and answers everything else with 421 4.3.2.
 *
 * Replies come from the catalogue in src/replies.ts. smtp-server answers protocol errors (syntax, command
 * sequence) by itself; ENHANCEDSTATUSCODES is advertised and smtp-server adds RFC 3463 codes to its own
 * replies, while ours carry the catalogue's code in their text.
 */
import { listenSmtp } from './listen';
import type { AddressInfo } from 'node:net';
import { SMTPServer } from 'smtp-server';
import type { SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import type { Authenticator } from '../auth/authenticator';
import type { IngressConfig } from '../config';
import type { Logger } from '../observability/logger';
import type { RecipientPolicy } from '../policy/policy';
import type { TenantQuota } from '../policy/tenant-quota';
import { REPLIES } from '../replies';
import type { Spool } from '../spool/spool';
import { ingressMetrics, rejection } from './ingress-metrics';
import { MessageReceiver } from './message-receiver';
import { SessionPolicy } from './session-policy';
import {
  SmtpServerInternals,
  verifySmtpServerInternals,
  type Reply,
  type SessionConnection,
} from './smtp-server-internals';

export interface SmtpListenerOptions {
  config: IngressConfig;
  spool: Spool;
  authenticator?: Authenticator;
  policy?: RecipientPolicy;
  /** BLOCKLIST_ACTION=reject: refuse suppressed recipients at RCPT TO (needs `policy`). */
  rejectSuppressed?: boolean;
  logger: Logger;
  /** Delay before answering a failed AUTH (slows down guessing). Default 1000 ms. */
  authFailureDelayMs?: number;
  /** Tenants' daily quotas (shared through Redis with REDIS_URL); default: counted in this process. */
  quota?: TenantQuota;
}

export interface SmtpListener {
  listen(): Promise<void>;
  close(graceMs: number): Promise<void>;
  address(): AddressInfo;
  readonly listening: boolean;
  activeSessions(): number;
  /** Raw TCP sockets the listener still holds (open sessions and TLS handshakes in progress). */
  openSockets(): number;
}

/** The name in the greeting banner: `220 <SERVER_FQDN> ESMTP ses-email-service`. */
export const BANNER = 'ses-email-service';

/** Hard cap on raw TCP connections (beyond SMTP_MAX_CLIENTS, which get a 421): dropped silently. */
const CONNECTION_HEADROOM = 64;
/** A reply text that already starts with an RFC 3463 code (ours always do). */
const ENHANCED_PREFIX = /^[245]\.\d{1,3}\.\d{1,3} /;

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Counted in the sessions gauge (decremented once in onClose). */
const COUNTED = new WeakSet<SMTPServerSession>();

/**
 * Every reply passes here (smtp-server-internals.ts routes them): ours keep their own enhanced code; smtp-server's
 * SIZE= refusal and the 500 for an AUTH hidden in this session become catalogue replies; the rest is counted.
 */
function replyRewriter(policy: SessionPolicy): (session: SMTPServerSession, reply: Reply) => Reply {
  return (session, reply) => {
    const { code, data } = reply;
    if (typeof data === 'string' && ENHANCED_PREFIX.test(data)) return { ...reply, context: false };
    let replacement = code === 552 ? rejection('messageTooBig') : undefined;
    if (code === 500 && reply.context === 'AUTH') replacement = policy.authCommandRefusal(session);
    if (replacement) return { code: replacement.responseCode, data: replacement.message, context: false };
    if (code >= 400) ingressMetrics.rejections.inc({ reply: `smtp_${code}` });
    return reply;
  };
}

export function createSmtpListener(options: SmtpListenerOptions): SmtpListener {
  // Before anything else: one clear line if the installed smtp-server is not the one the internals know.
  verifySmtpServerInternals();
  const { config } = options;
  const log = options.logger.child({ component: 'ingress' });
  let closing = false;
  let closePromise: Promise<void> | undefined;
  const policy = new SessionPolicy({
    config,
    authenticator: options.authenticator,
    recipientPolicy: options.policy,
    rejectSuppressed: options.rejectSuppressed,
    logger: log,
    authFailureDelayMs: options.authFailureDelayMs,
    closing: () => closing,
    quota: options.quota,
  });
  const receiver = new MessageReceiver({
    config,
    spool: options.spool,
    policy,
    logger: log,
    afterReply(session, stream) {
      // Shutting down: the transaction that was let finish is answered; now the session ends.
      const conn = closing ? internals.connectionOf(session) : undefined;
      if (!conn) return;
      const after = (): void => void setImmediate(() => shutDown(conn));
      if (stream.readableEnded || stream.destroyed) after();
      else stream.once('end', after);
    },
  });

  const smtp = new SMTPServer(serverOptions(config, policy, receiver, () => closing, internalsOf, log));
  const internals = new SmtpServerInternals(smtp, {
    greetingDelayMs: config.greetingDelayMs,
    rewriteReply: replyRewriter(policy),
  });
  function internalsOf(): SmtpServerInternals {
    return internals;
  }
  smtp.server.maxConnections = config.maxClients + CONNECTION_HEADROOM;
  smtp.on('error', (err: Error & { code?: string }) => {
    log.debug({ event: 'smtp:error', code: err.code, err: err.message }, 'SMTP connection error');
  });

  return {
    listen: () => listen(smtp, config, policy, log),
    close(graceMs: number) {
      closing = true;
      closePromise ??= drainAndClose(smtp, internals, receiver, graceMs);
      return closePromise;
    },
    address: () => smtp.server.address() as AddressInfo,
    get listening() {
      return smtp.server.listening;
    },
    activeSessions: () => smtp.connections.size,
    openSockets: () => internals.openSockets,
  };
}

/** 421 4.3.2 and close (smtp-server closes the connection after any 421), once, while it is open. */
function shutDown(conn: SessionConnection): void {
  if (!conn.open) return;
  ingressMetrics.rejections.inc({ reply: 'shuttingDown' });
  const r = REPLIES.shuttingDown;
  conn.reply(r.code, `${r.enhanced} ${r.text}`);
}

/** Shutdown: 421 to idle sessions, transactions in DATA finish within graceMs, then everything is closed. */
async function drainAndClose(
  smtp: SMTPServer,
  internals: SmtpServerInternals,
  receiver: MessageReceiver,
  graceMs: number,
): Promise<void> {
  for (const conn of internals.connections()) {
    if (!receiver.isReceiving(conn.session)) shutDown(conn);
  }
  const deadline = Date.now() + Math.max(0, graceMs);
  while (smtp.connections.size > 0 && Date.now() < deadline) await sleep(20);
  for (const conn of internals.connections()) shutDown(conn);
  // Give the 421s a moment to be flushed, then drop whatever is left.
  const flushDeadline = Date.now() + 200;
  while (internals.openSockets > 0 && Date.now() < flushDeadline) await sleep(10);
  await new Promise<void>((resolve) => {
    smtp.close(() => resolve());
    internals.destroySockets();
  });
}

function serverOptions(
  config: IngressConfig,
  policy: SessionPolicy,
  receiver: MessageReceiver,
  closing: () => boolean,
  internals: () => SmtpServerInternals,
  log: Logger,
): SMTPServerOptions {
  return {
    name: config.serverName,
    banner: BANNER,
    heloResponse: '%s Hello %s',
    secure: config.implicitTls,
    key: config.tls?.key,
    cert: config.tls?.cert,
    hideSTARTTLS: !policy.starttls,
    disabledCommands: policy.serverDisabledCommands,
    authMethods: ['PLAIN', 'LOGIN'],
    // We decide ourselves who must AUTH (trusted networks need not) and where AUTH is allowed.
    authOptional: true,
    allowInsecureAuth: true,
    size: config.maxMessageSize,
    hideENHANCEDSTATUSCODES: false,
    // DSN (RFC 3461) only when the relay sends notifications (BOUNCE_FROM): smtp-server's public option.
    hideDSN: !config.dsn,
    // Amazon SES does not support SMTPUTF8: do not invite clients to send non-ASCII addresses.
    hideSMTPUTF8: true,
    // The PTR of the client adds nothing here and costs up to 1.5 s per connection with a slow DNS.
    disableReverseLookup: true,
    socketTimeout: config.socketTimeoutMs,
    closeTimeout: 1000,
    logger: false,

    onConnect(session, callback) {
      if (!internals().adopt(session)) {
        // Not expected: verifySmtpServerInternals() checked the lookup at start.
        log.error({ event: 'ingress:internals' }, 'smtp-server connection not found; reply adjustments off');
      }
      // smtp-server's public per-session option: hides AUTH from EHLO where it is not usable.
      session.disabledCommands = policy.disabledCommands(session);
      if (closing()) return callback(rejection('shuttingDown'));
      if (internals().connectionCount > config.maxClients) {
        return callback(rejection('tooManyConnections'));
      }
      COUNTED.add(session);
      ingressMetrics.sessions.inc();
      callback();
    },
    onSecure(_socket, session, callback) {
      // After STARTTLS AUTH becomes usable.
      session.disabledCommands = policy.disabledCommands(session);
      callback();
    },
    onClose(session) {
      internals().release(session);
      policy.quotaGate.release(session);
      if (COUNTED.delete(session)) ingressMetrics.sessions.dec();
    },
    onAuth: (auth, session, callback) => policy.onAuth(auth, session, callback),
    onMailFrom: (address, session, callback) => policy.onMailFrom(address, session, callback),
    onRcptTo: (address, session, callback) => policy.onRcptTo(address, session, callback),
    onData: (stream, session, callback) => receiver.receive(stream, session, callback),
  };
}

async function listen(
  smtp: SMTPServer,
  config: IngressConfig,
  policy: SessionPolicy,
  log: Logger,
): Promise<void> {
  const a = await listenSmtp(smtp, config.port, config.host);
  log.info(
    {
      event: 'ingress:listening',
      host: a.address,
      port: a.port,
      tls: config.implicitTls ? 'implicit' : policy.starttls ? 'starttls' : 'none',
      auth: !!policy.authenticator,
    },
    'SMTP listener ready',
  );
}
