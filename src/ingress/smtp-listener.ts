/**
 * The SMTP listener (ingress): smtp-server in front of the spool.
 *
 * - No open relay: with users (SMTP_USERS) or an authenticator (API keys), a client must AUTH before
 *   MAIL FROM unless it is in SMTP_TRUSTED_NETWORKS; with neither, only trusted networks may send.
 * - AUTH (PLAIN, LOGIN) is only advertised and accepted where it is usable: over TLS (STARTTLS or
 *   implicit TLS), from a trusted network, or with SMTP_ALLOW_INSECURE_AUTH. Failed AUTH attempts are
 *   slowed down and counted per client address; too many lock the address out for a while.
 * - 250 is sent only after `spool.store` resolved (durable); the body is streamed, never buffered
 *   whole, normalised to CRLF line endings (see line-endings.ts for the smuggling rule) and cut off
 *   when what would be stored exceeds SMTP_MAX_MESSAGE_SIZE (the rest is drained and discarded, then 552).
 * - close(graceMs) lets transactions in DATA finish, answers everything else with 421 4.3.2.
 *
 * Replies come from the catalogue in src/replies.ts. smtp-server answers protocol errors (syntax,
 * command sequence) by itself; ENHANCEDSTATUSCODES is advertised and smtp-server adds RFC 3463 codes
 * to its own replies, while ours carry the catalogue's code in their text.
 */
import type { AddressInfo, Socket } from 'node:net';
import type { Transform } from 'node:stream';
import { SMTPServer } from 'smtp-server';
import type { SMTPServerDataStream, SMTPServerOptions, SMTPServerSession } from 'smtp-server';
import type { IngressConfig } from '../config';
import type { Logger } from '../observability/logger';
import { PolicyUnavailableError, type RecipientPolicy } from '../policy/policy';
import { REPLIES, SmtpReplyError, smtpError, type ReplyKey } from '../replies';
import { SpoolWriteError, type Spool } from '../spool/spool';
import type { Envelope } from '../types';
import { checkAddress, domainOf } from './address-syntax';
import {
  AuthUnavailableError,
  userNameHash,
  type AuthenticatedUser,
  type Authenticator,
} from '../auth/authenticator';
import { AuthFailureTracker } from '../auth/auth-failures';
import { TrustedNetworks } from './client-access';
import { ingressMetrics } from './ingress-metrics';
import { LineEndingNormalizer, MessageTooBigError } from './line-endings';
import { HEADER_SECTION_LIMIT, HeaderSectionCheck, senderHeaderAddresses } from './message-headers';
import { StaticUserAuthenticator } from '../auth/static-users';

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

const DEFAULT_AUTH_FAILURE_DELAY_MS = 1000;
/** Hard cap on raw TCP connections (beyond SMTP_MAX_CLIENTS, which get a 421): dropped silently. */
const CONNECTION_HEADROOM = 64;
/** A reply text that already starts with an RFC 3463 code (ours always do). */
const ENHANCED_PREFIX = /^[245]\.\d{1,3}\.\d{1,3} /;

/** The parts of smtp-server's SMTPConnection we rely on (3.21). */
interface ConnectionInternals {
  id: string;
  session: SMTPServerSession;
  send(code: number, data?: string | string[] | null, context?: string | false): void;
  close(): void;
  /** The socket the connection reads from: the raw TCP socket until a STARTTLS upgrade. */
  _socket: Socket;
  handler_EHLO(command: Buffer, callback: () => void): void;
  handler_AUTH(command: Buffer, callback: () => void): void;
}

interface SessionState {
  /** Client address is in SMTP_TRUSTED_NETWORKS. */
  trusted: boolean;
  /** A DATA transaction is being received/stored; close() lets it finish. */
  inData: boolean;
  /** Counted in the sessions gauge. */
  counted: boolean;
  connection?: ConnectionInternals;
  /** The raw TCP socket of this session (forgotten in onClose, see rawSockets). */
  rawSocket?: Socket;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

function replyText(key: ReplyKey, detail?: string): string {
  const r = REPLIES[key];
  return `${r.enhanced} ${r.text}${detail ? ` ${detail}` : ''}`;
}

export function createSmtpListener(options: SmtpListenerOptions): SmtpListener {
  const { config, spool, policy } = options;
  const log = options.logger.child({ component: 'ingress' });
  const authenticator =
    options.authenticator ?? (config.users.length ? new StaticUserAuthenticator(config.users) : undefined);
  const rejectSuppressed = !!(options.rejectSuppressed && policy);
  const authFailureDelayMs = options.authFailureDelayMs ?? DEFAULT_AUTH_FAILURE_DELAY_MS;
  const trustedNetworks = new TrustedNetworks(config.trustedNetworks);
  const authFailures = new AuthFailureTracker({
    maxFailures: config.authMaxFailures,
    lockoutMs: config.authLockoutMs,
  });
  const states = new WeakMap<SMTPServerSession, SessionState>();
  const rawSockets = new Set<Socket>();
  let closing = false;
  let closePromise: Promise<void> | undefined;

  const starttls = !!config.tls && !config.implicitTls;
  const disabledCommands: string[] = [];
  if (!authenticator) disabledCommands.push('AUTH');
  if (!starttls) disabledCommands.push('STARTTLS');

  function reject(key: ReplyKey, detail?: string): SmtpReplyError {
    ingressMetrics.rejections.inc({ reply: key });
    return smtpError(key, detail);
  }

  function stateOf(session: SMTPServerSession): SessionState {
    let s = states.get(session);
    if (!s) {
      s = { trusted: trustedNetworks.contains(session.remoteAddress), inData: false, counted: false };
      states.set(session, s);
    }
    return s;
  }

  function authUsable(session: SMTPServerSession): boolean {
    if (!authenticator) return false;
    return !!session.secure || stateOf(session).trusted || config.allowInsecureAuth;
  }

  function userOf(session: SMTPServerSession): AuthenticatedUser | undefined {
    return session.user ? (session.user as AuthenticatedUser) : undefined;
  }

  function connections(): ConnectionInternals[] {
    return [...(smtp.connections as Set<unknown>)] as ConnectionInternals[];
  }

  /** 421 4.3.2 and close (smtp-server closes the connection after any 421). */
  function shutDown(conn: ConnectionInternals): void {
    ingressMetrics.rejections.inc({ reply: 'shuttingDown' });
    conn.send(REPLIES.shuttingDown.code, replyText('shuttingDown'), false);
  }

  /**
   * Per-connection adjustments smtp-server has no option for:
   * - replies whose text already carries an enhanced status code get no second one;
   * - EHLO hides AUTH when it is not usable in this session (plaintext, untrusted);
   * - AUTH is refused before any credentials are read when not usable (538) or locked out (421).
   */
  function adjustConnection(conn: ConnectionInternals): void {
    const send = conn.send.bind(conn);
    conn.send = (code, data, context) => {
      // smtp-server's own 552 for MAIL FROM SIZE= over the limit: the catalogue's text instead.
      if (context === 'MESSAGE_TOO_BIG') {
        ingressMetrics.rejections.inc({ reply: 'messageTooBig' });
        return send(REPLIES.messageTooBig.code, replyText('messageTooBig'), false);
      }
      const own = typeof data === 'string' && ENHANCED_PREFIX.test(data);
      if (code >= 400 && !own) ingressMetrics.rejections.inc({ reply: `smtp_${code}` });
      send(code, data, own ? false : context);
    };
    const ehlo = conn.handler_EHLO;
    conn.handler_EHLO = (command, callback) => {
      const session = conn.session;
      const saved = session.disabledCommands;
      if (!authUsable(session)) session.disabledCommands = [...disabledCommands, 'AUTH'];
      try {
        ehlo.call(conn, command, callback);
      } finally {
        session.disabledCommands = saved;
      }
    };
    const auth = conn.handler_AUTH;
    conn.handler_AUTH = (command, callback) => {
      const session = conn.session;
      if (!session.user && authFailures.isLockedOut(session.remoteAddress)) {
        ingressMetrics.authFailures.inc();
        const err = reject('authLockedOut');
        conn.send(err.responseCode, err.message);
        return callback();
      }
      if (!session.user && !authUsable(session)) {
        const err = reject('encryptionRequired');
        conn.send(err.responseCode, err.message);
        return callback();
      }
      auth.call(conn, command, callback);
    };
  }

  /**
   * A failed AUTH (wrong credentials, or no answer): counted toward the lockout, slowed down, logged with a
   * hash of the user name only (clients type API keys and passwords into the user field).
   */
  async function refuseAuth(client: string, username: string, key: ReplyKey): Promise<SmtpReplyError> {
    ingressMetrics.authFailures.inc();
    const locked = authFailures.recordFailure(client);
    log.warn(
      { event: locked ? 'auth:locked-out' : 'auth:failed', client, userHash: userNameHash(username) },
      locked ? 'AUTH failed; client address locked out' : 'AUTH failed',
    );
    await sleep(authFailureDelayMs);
    return reject(locked ? 'authLockedOut' : key);
  }

  const serverOptions: SMTPServerOptions = {
    name: config.serverName,
    banner: BANNER,
    heloResponse: '%s Hello %s',
    secure: config.implicitTls,
    key: config.tls?.key,
    cert: config.tls?.cert,
    hideSTARTTLS: !starttls,
    disabledCommands,
    authMethods: ['PLAIN', 'LOGIN'],
    // We decide ourselves who must AUTH (trusted networks need not) and where AUTH is allowed.
    authOptional: true,
    allowInsecureAuth: true,
    size: config.maxMessageSize,
    hideENHANCEDSTATUSCODES: false,
    // Amazon SES does not support SMTPUTF8: do not invite clients to send non-ASCII addresses.
    hideSMTPUTF8: true,
    // The PTR of the client adds nothing here and costs up to 1.5 s per connection with a slow DNS.
    disableReverseLookup: true,
    socketTimeout: config.socketTimeoutMs,
    closeTimeout: 1000,
    logger: false,

    onConnect(session, callback) {
      const state = stateOf(session);
      const conn = connections().find((c) => c.id === session.id);
      if (conn) {
        state.connection = conn;
        // Before any STARTTLS, _socket is the raw socket accepted by the listener (implicit TLS: the
        // TLSSocket, whose raw socket keeps its own close listener).
        state.rawSocket = conn._socket;
        adjustConnection(conn);
      } else {
        log.warn({ event: 'ingress:internals' }, 'smtp-server connection not found; reply adjustments off');
      }
      if (closing) return callback(reject('shuttingDown'));
      if (smtp.connections.size > config.maxClients) return callback(reject('tooManyConnections'));
      state.counted = true;
      ingressMetrics.sessions.inc();
      callback();
    },

    onClose(session) {
      const state = states.get(session);
      // STARTTLS strips every listener from the raw socket (smtp-server's upgrade() calls
      // removeAllListeners()), including the one that removes it from rawSockets on close: the end of
      // the session removes it instead, or the set would keep every STARTTLS connection alive.
      if (state?.rawSocket) rawSockets.delete(state.rawSocket);
      if (state?.counted) {
        state.counted = false;
        ingressMetrics.sessions.dec();
      }
    },

    onAuth(auth, session, callback) {
      const client = session.remoteAddress;
      if (!authenticator) return callback(reject('authInvalid'));
      if (authFailures.isLockedOut(client)) {
        ingressMetrics.authFailures.inc();
        return callback(reject('authLockedOut'));
      }
      if (!authUsable(session)) return callback(reject('encryptionRequired'));
      const username = auth.username ?? '';
      authenticator.authenticate(username, auth.password ?? '').then(
        (user) => {
          if (!user) return void refuseAuth(client, username, 'authInvalid').then(callback);
          log.info({ event: 'auth:accepted', client, user: user.user }, 'AUTH accepted');
          callback(null, { user });
        },
        (err: unknown) => {
          // Nobody accepted and one authenticator could not answer (DynamoDB down): still a failed attempt,
          // with the same delay and count, or static passwords could be guessed unthrottled during an outage.
          const userHash = userNameHash(username);
          if (!(err instanceof AuthUnavailableError)) {
            log.error({ event: 'auth:error', client, userHash, err }, 'authenticator failed');
          } else {
            log.warn(
              { event: 'auth:unavailable', client, userHash, err: err.message },
              'authenticator unavailable',
            );
          }
          void refuseAuth(client, username, 'authUnavailable').then(callback);
        },
      );
    },

    onMailFrom(address, session, callback) {
      const state = stateOf(session);
      if (closing) return callback(reject('shuttingDown'));
      const user = userOf(session);
      if (!user && !state.trusted) return callback(reject(authenticator ? 'authRequired' : 'relayDenied'));
      const check = checkAddress(address.address, 'sender');
      if (!check.ok) return callback(reject('badSenderSyntax', check.reason));
      if (user?.allowedFromDomains) {
        const domain = domainOf(check.address);
        if (!domain || !user.allowedFromDomains.includes(domain)) return callback(reject('senderNotAllowed'));
      }
      callback();
    },

    onRcptTo(address, session, callback) {
      if (closing) return callback(reject('shuttingDown'));
      const check = checkAddress(address.address, 'recipient');
      if (!check.ok) return callback(reject('badRecipientSyntax', check.reason));
      const rcpts = session.envelope.rcptTo;
      if (rcpts.length >= config.maxRecipients) {
        const key = address.address.toLowerCase();
        // A repeated recipient replaces the earlier one (smtp-server), so it does not count.
        if (!rcpts.some((r) => r.address.toLowerCase() === key)) return callback(reject('tooManyRecipients'));
      }
      if (!rejectSuppressed || !policy) return callback();
      policy.check([check.address]).then(
        (decision) => callback(decision.suppressed.length ? reject('recipientSuppressed') : undefined),
        (err: unknown) => {
          if (!(err instanceof PolicyUnavailableError))
            log.error({ event: 'policy:error', err }, 'policy failed');
          callback(reject('policyUnavailable'));
        },
      );
    },

    onData(stream, session, callback) {
      receiveMessage(stream, session, callback);
    },
  };

  /** API keys with allowed_from_domains: every From: and Sender: address must be in them (see message-headers.ts). */
  function headerSendersRefusal(section: string | undefined, allowed: string[]): SmtpReplyError | undefined {
    if (section === undefined) {
      return reject('headerSenderNotAllowed', `header section over ${HEADER_SECTION_LIMIT} bytes`);
    }
    const { from, sender } = senderHeaderAddresses(section);
    if (from.length === 0) return reject('headerSenderNotAllowed', 'no From address');
    for (const address of [...from, ...sender]) {
      const check = checkAddress(address, 'sender');
      const domain = check.ok ? domainOf(check.address) : undefined;
      if (!domain || !allowed.includes(domain)) return reject('headerSenderNotAllowed');
    }
    return undefined;
  }

  function envelopeOf(session: SMTPServerSession): Envelope {
    const from = session.envelope.mailFrom;
    const sender = from ? checkAddress(from.address, 'sender') : undefined;
    const seen = new Set<string>();
    const recipients: string[] = [];
    for (const r of session.envelope.rcptTo) {
      const c = checkAddress(r.address, 'recipient');
      const address = c.ok ? c.address : r.address;
      const key = address.toLowerCase();
      if (seen.has(key)) continue;
      seen.add(key);
      recipients.push(address);
    }
    return { mailFrom: sender?.ok ? sender.address : '', recipients };
  }

  function receiveMessage(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    callback: (err?: Error | null, message?: string) => void,
  ): void {
    const state = stateOf(session);
    state.inData = true;
    const envelope = envelopeOf(session);
    const user = userOf(session);
    const client = session.remoteAddress;
    // The size limit counts the bytes as stored (after normalisation); the normalizer fails before its end.
    const normalizer = new LineEndingNormalizer({ maxBytes: config.maxMessageSize });
    const stages: Transform[] = [normalizer];
    const allowed = user?.allowedFromDomains;
    if (allowed) stages.push(new HeaderSectionCheck((section) => headerSendersRefusal(section, allowed)));
    const body = stages[stages.length - 1];
    /** Why we refused the message ourselves (the spool then reports the failed body as a write error). */
    let refusal: SmtpReplyError | undefined;
    let aborted = false;

    // Stop storing: the spool sees the error and keeps nothing. The rest of the DATA is still read
    // (and discarded) so that the reply comes after the client's end-of-data, never in between.
    const abort = (err: Error): void => {
      if (aborted) return;
      aborted = true;
      stream.unpipe(normalizer);
      for (const stage of stages) stage.destroy(err);
      stream.resume();
      setImmediate(() => stream.resume());
    };
    for (const stage of stages) {
      stage.on('error', (err) => {
        if (err instanceof MessageTooBigError) refusal ??= reject('messageTooBig');
        else if (err instanceof SmtpReplyError) refusal ??= err;
        abort(err);
      });
    }
    stream.on('error', (err) => abort(err));
    stream.pipe(normalizer);
    for (let i = 1; i < stages.length; i++) stages[i - 1].pipe(stages[i]);

    let answered = false;
    const finish = (err: Error | null, message?: string): void => {
      if (answered) return;
      answered = true;
      state.inData = false;
      callback(err, message);
      if (closing && state.connection) {
        const conn = state.connection;
        const after = (): void => void setImmediate(() => shutDown(conn));
        if (stream.readableEnded || stream.destroyed) after();
        else stream.once('end', after);
      }
    };

    spool
      .store(envelope, body, {
        clientAddress: client,
        heloName: session.hostNameAppearsAs || undefined,
        authUser: user?.user,
      })
      .then(
        (queueId) => {
          ingressMetrics.messagesReceived.inc();
          ingressMetrics.recipientsReceived.inc(envelope.recipients.length);
          ingressMetrics.receivedBytes.inc(normalizer.bytesOut);
          log.info(
            {
              event: 'message:accepted',
              queueId,
              from: envelope.mailFrom,
              rcpts: envelope.recipients.length,
              size: normalizer.bytesOut,
              client,
              user: user?.user,
            },
            'message accepted',
          );
          finish(null, `${replyText('queued')} ${queueId}`);
        },
        (err: unknown) => {
          abort(err instanceof Error ? err : new Error(String(err)));
          if (refusal) {
            log.info(
              { event: 'message:refused', client, reply: refusal.key, limit: config.maxMessageSize },
              'message refused',
            );
            return finish(refusal);
          }
          if (!(err instanceof SpoolWriteError)) {
            log.error({ event: 'spool:error', client, err }, 'spool store failed unexpectedly');
          } else {
            log.error({ event: 'spool:write-failed', client, err: err.message }, 'spool store failed');
          }
          finish(reject('spoolUnavailable'));
        },
      );
  }

  const smtp = new SMTPServer(serverOptions);
  smtp.server.maxConnections = config.maxClients + CONNECTION_HEADROOM;
  smtp.server.on('connection', (socket: Socket) => {
    rawSockets.add(socket);
    socket.once('close', () => rawSockets.delete(socket));
  });
  smtp.on('error', (err: Error & { code?: string }) => {
    log.debug({ event: 'smtp:error', code: err.code, err: err.message }, 'SMTP connection error');
  });

  async function closeNow(graceMs: number): Promise<void> {
    closing = true;
    for (const conn of connections()) {
      if (!states.get(conn.session)?.inData) shutDown(conn);
    }
    const deadline = Date.now() + Math.max(0, graceMs);
    while (smtp.connections.size > 0 && Date.now() < deadline) await sleep(20);
    for (const conn of connections()) shutDown(conn);
    // Give the 421s a moment to be flushed, then drop whatever is left.
    const flushDeadline = Date.now() + 200;
    while (rawSockets.size > 0 && Date.now() < flushDeadline) await sleep(10);
    await new Promise<void>((resolve) => {
      smtp.close(() => resolve());
      for (const socket of rawSockets) socket.destroy();
    });
  }

  return {
    listen() {
      return new Promise<void>((resolve, reject) => {
        const onError = (err: Error): void => {
          smtp.server.off('listening', onListening);
          reject(err);
        };
        const onListening = (): void => {
          smtp.server.off('error', onError);
          const a = smtp.server.address() as AddressInfo;
          log.info(
            {
              event: 'ingress:listening',
              host: a.address,
              port: a.port,
              tls: config.implicitTls ? 'implicit' : starttls ? 'starttls' : 'none',
              auth: !!authenticator,
            },
            'SMTP listener ready',
          );
          resolve();
        };
        smtp.server.once('error', onError);
        smtp.server.once('listening', onListening);
        smtp.listen(config.port, config.host);
      });
    },
    close(graceMs: number) {
      closePromise ??= closeNow(graceMs);
      return closePromise;
    },
    address() {
      return smtp.server.address() as AddressInfo;
    },
    get listening() {
      return smtp.server.listening;
    },
    activeSessions() {
      return smtp.connections.size;
    },
    openSockets() {
      return rawSockets.size;
    },
  };
}
