/**
 * Who may do what in an SMTP session (the rules; the listener wires them to smtp-server's handlers):
 *
 * - No open relay: with an authenticator (SMTP_USERS or API keys), a client must AUTH before MAIL FROM
 *   unless it is in SMTP_TRUSTED_NETWORKS; with none, only trusted networks may send (550 5.7.1).
 * - AUTH (PLAIN, LOGIN) is only advertised and accepted where it is usable: over TLS (STARTTLS or implicit
 *   TLS), from a trusted network, or with SMTP_ALLOW_INSECURE_AUTH; elsewhere AUTH is 538 5.7.11 before any
 *   credentials are read. The session's `disabledCommands` (smtp-server's public per-session option) hides
 *   it from EHLO.
 * - Every AUTH nobody accepted (wrong credentials, or an authenticator that could not answer) is a failure:
 *   slowed down by the failure delay and counted per client network (src/auth/auth-failures.ts); too many
 *   lock the network out (421 4.7.0) for SMTP_AUTH_LOCKOUT. Logs carry a hash of the user name, never the
 *   name (clients type API keys and passwords into it).
 * - Envelope: address syntax (address-syntax.ts), an API key's allowed_from_domains for MAIL FROM and, at
 *   the end of the header section, for every From:/Sender: address; SMTP_MAX_RECIPIENTS; with
 *   BLOCKLIST_ACTION=reject, suppressed recipients at RCPT TO.
 * - A tenant's daily_quota (quota-gate.ts): 451 4.7.1 at MAIL FROM once spent, at RCPT TO when this
 *   recipient would exceed it; 451 4.3.0 when the shared count cannot be read.
 * - The tenant of a session (`tenantOf`): the authenticated user's (its API key's name or SMTP user name,
 *   with its policy); without AUTH (trusted networks) `{ name: UNAUTHENTICATED_TENANT, priority: 'normal' }`.
 *   Every message the listener stores carries it in `reception.tenant`.
 * - DSN parameters (RFC 3461, offered only with BOUNCE_FROM): smtp-server parses RET, ENVID, NOTIFY and
 *   ORCPT, decodes xtext and refuses control characters; ENVID and ORCPT must also be printable US-ASCII
 *   of at most 100 and 500 characters (RFC 3461 sections 4.4 and 4.2), as they are copied into the
 *   notification. `envelopeOf` keeps them with the envelope.
 */
import type { SMTPServerAddress, SMTPServerAuthentication, SMTPServerSession } from 'smtp-server';
import { AuthFailureTracker } from '../auth/auth-failures';
import {
  AuthUnavailableError,
  userNameHash,
  type AuthenticatedUser,
  type Authenticator,
} from '../auth/authenticator';
import { StaticUserAuthenticator } from '../auth/static-users';
import type { IngressConfig } from '../config';
import type { Logger } from '../observability/logger';
import { PolicyUnavailableError, type RecipientPolicy } from '../policy/policy';
import type { ReplyKey, SmtpReplyError } from '../replies';
import { createTenantQuota, type TenantQuota } from '../policy/tenant-quota';
import {
  UNAUTHENTICATED_TENANT,
  type DsnNotifyKeyword,
  type Envelope,
  type EnvelopeDsn,
  type RecipientDsn,
  type Tenant,
} from '../types';
import { checkAddress, domainOf } from './address-syntax';
import { TrustedNetworks } from './client-access';
import { ingressMetrics, rejection } from './ingress-metrics';
import { HEADER_SECTION_LIMIT, senderHeaderAddresses } from './message-headers';
import { QuotaGate } from './quota-gate';

const DEFAULT_AUTH_FAILURE_DELAY_MS = 1000;
/** RFC 3461 section 4.4 (ENVID) and 4.2 (ORCPT): lengths, and printable US-ASCII only. */
const ENVID_MAX = 100;
const ORCPT_MAX = 500;
const PRINTABLE_ASCII = /^[\x20-\x7e]+$/;
/** The tenant of mail from trusted networks without AUTH. */
const TRUSTED_TENANT: Tenant = Object.freeze({ name: UNAUTHENTICATED_TENANT, priority: 'normal' });

/** Why a DSN parameter value is refused, or undefined when it is fine (or absent). */
function dsnValueProblem(name: string, value: string | null | undefined, max: number): string | undefined {
  if (value === null || value === undefined) return undefined;
  if (value.length > max) return `${name} longer than ${max} characters`;
  if (!PRINTABLE_ASCII.test(value)) return `${name} is not printable US-ASCII`;
  return undefined;
}

type Done = (err?: Error | null) => void;
type AuthDone = (err: Error | null | undefined, response?: { user: AuthenticatedUser }) => void;

export interface SessionPolicyOptions {
  config: IngressConfig;
  /** Default: the static users of config.users, if any. */
  authenticator?: Authenticator;
  recipientPolicy?: RecipientPolicy;
  /** BLOCKLIST_ACTION=reject: refuse suppressed recipients at RCPT TO (needs recipientPolicy). */
  rejectSuppressed?: boolean;
  logger: Logger;
  /** Delay before answering a failed AUTH (slows down guessing). Default 1000 ms. */
  authFailureDelayMs?: number;
  /** True once the listener is shutting down (MAIL and RCPT get 421 4.3.2). */
  closing(): boolean;
  /** Daily quotas of tenants (shared through Redis); default: counted in this process. */
  quota?: TenantQuota;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

export class SessionPolicy {
  readonly authenticator?: Authenticator;
  private readonly config: IngressConfig;
  private readonly recipientPolicy?: RecipientPolicy;
  private readonly rejectSuppressed: boolean;
  private readonly log: Logger;
  private readonly authFailureDelayMs: number;
  private readonly closing: () => boolean;
  private readonly trustedNetworks: TrustedNetworks;
  private readonly authFailures: AuthFailureTracker;
  readonly quotaGate: QuotaGate;
  private readonly trustedSessions = new WeakMap<SMTPServerSession, boolean>();
  /** Commands off for every session: AUTH without an authenticator, STARTTLS without it being offered. */
  private readonly alwaysDisabled: string[] = [];

  constructor(options: SessionPolicyOptions) {
    const { config } = options;
    this.config = config;
    this.authenticator =
      options.authenticator ?? (config.users.length ? new StaticUserAuthenticator(config.users) : undefined);
    this.recipientPolicy = options.recipientPolicy;
    this.rejectSuppressed = !!(options.rejectSuppressed && options.recipientPolicy);
    this.log = options.logger;
    this.authFailureDelayMs = options.authFailureDelayMs ?? DEFAULT_AUTH_FAILURE_DELAY_MS;
    this.closing = options.closing;
    this.trustedNetworks = new TrustedNetworks(config.trustedNetworks);
    this.authFailures = new AuthFailureTracker({
      maxFailures: config.authMaxFailures,
      lockoutMs: config.authLockoutMs,
    });
    this.quotaGate = new QuotaGate(options.quota ?? createTenantQuota(), this.log);
    if (!this.authenticator) this.alwaysDisabled.push('AUTH');
    if (!this.starttls) this.alwaysDisabled.push('STARTTLS');
  }

  /** STARTTLS is offered (a certificate and no implicit TLS). */
  get starttls(): boolean {
    return !!this.config.tls && !this.config.implicitTls;
  }

  /** The commands no session may use (smtp-server's server-wide `disabledCommands`). */
  get serverDisabledCommands(): string[] {
    return [...this.alwaysDisabled];
  }

  trusted(session: SMTPServerSession): boolean {
    let t = this.trustedSessions.get(session);
    if (t === undefined) {
      t = this.trustedNetworks.contains(session.remoteAddress);
      this.trustedSessions.set(session, t);
    }
    return t;
  }

  authUsable(session: SMTPServerSession): boolean {
    if (!this.authenticator) return false;
    return !!session.secure || this.trusted(session) || this.config.allowInsecureAuth;
  }

  /** This session's `disabledCommands` (set at connect and again after STARTTLS). */
  disabledCommands(session: SMTPServerSession): string[] {
    const off = [...this.alwaysDisabled];
    if (this.authenticator && this.authCommandRefusalKey(session)) off.push('AUTH');
    return off;
  }

  private authCommandRefusalKey(session: SMTPServerSession): ReplyKey | undefined {
    if (!this.authenticator || session.user) return undefined;
    if (this.authFailures.isLockedOut(session.remoteAddress)) return 'authLockedOut';
    if (!this.authUsable(session)) return 'encryptionRequired';
    return undefined;
  }

  /**
   * The reply to an AUTH command that disabledCommands hid in this session (smtp-server would say 500):
   * 538 5.7.11 over plaintext, 421 4.7.0 when locked out; undefined when AUTH is off for everyone.
   */
  authCommandRefusal(session: SMTPServerSession): SmtpReplyError | undefined {
    const key = this.authCommandRefusalKey(session);
    if (!key) return undefined;
    if (key === 'authLockedOut') ingressMetrics.authFailures.inc();
    return rejection(key);
  }

  userOf(session: SMTPServerSession): AuthenticatedUser | undefined {
    return session.user ? (session.user as AuthenticatedUser) : undefined;
  }

  /** Whose mail this session sends: the authenticated user's tenant, else the trusted networks'. */
  tenantOf(session: SMTPServerSession): Tenant {
    const user = this.userOf(session);
    if (!user) return TRUSTED_TENANT;
    return user.tenant ?? { name: user.user, priority: 'normal' };
  }

  onAuth(auth: SMTPServerAuthentication, session: SMTPServerSession, callback: AuthDone): void {
    const client = session.remoteAddress;
    const authenticator = this.authenticator;
    if (!authenticator) return callback(rejection('authInvalid'));
    // Checked again: another session of this client network may have locked it out since this one began.
    if (this.authFailures.isLockedOut(client)) {
      ingressMetrics.authFailures.inc();
      return callback(rejection('authLockedOut'));
    }
    if (!this.authUsable(session)) return callback(rejection('encryptionRequired'));
    const username = auth.username ?? '';
    authenticator.authenticate(username, auth.password ?? '').then(
      (user) => {
        if (!user) return void this.refuseAuth(client, username, 'authInvalid').then(callback);
        this.log.info({ event: 'auth:accepted', client, user: user.user }, 'AUTH accepted');
        callback(null, { user });
      },
      (err: unknown) => {
        // Nobody accepted and one authenticator could not answer (DynamoDB down): still a failed attempt,
        // with the same delay and count, or static passwords could be guessed unthrottled during an outage.
        const userHash = userNameHash(username);
        if (err instanceof AuthUnavailableError) {
          const fields = { event: 'auth:unavailable', client, userHash, err: err.message };
          this.log.warn(fields, 'authenticator unavailable');
        } else {
          this.log.error({ event: 'auth:error', client, userHash, err }, 'authenticator failed');
        }
        void this.refuseAuth(client, username, 'authUnavailable').then(callback);
      },
    );
  }

  /** A failed AUTH: counted toward the lockout, slowed down, logged with a hash of the user name only. */
  private async refuseAuth(client: string, username: string, key: ReplyKey): Promise<SmtpReplyError> {
    ingressMetrics.authFailures.inc();
    const locked = this.authFailures.recordFailure(client);
    this.log.warn(
      { event: locked ? 'auth:locked-out' : 'auth:failed', client, userHash: userNameHash(username) },
      locked ? 'AUTH failed; client address locked out' : 'AUTH failed',
    );
    await sleep(this.authFailureDelayMs);
    return rejection(locked ? 'authLockedOut' : key);
  }

  onMailFrom(address: SMTPServerAddress, session: SMTPServerSession, callback: Done): void {
    if (this.closing()) return callback(rejection('shuttingDown'));
    const user = this.userOf(session);
    if (!user && !this.trusted(session)) {
      return callback(rejection(this.authenticator ? 'authRequired' : 'relayDenied'));
    }
    const check = checkAddress(address.address, 'sender');
    if (!check.ok) return callback(rejection('badSenderSyntax', check.reason));
    const envid = dsnValueProblem('ENVID', session.envelope.dsn?.envid, ENVID_MAX);
    if (envid) return callback(rejection('badDsnParameter', envid));
    if (user?.allowedFromDomains) {
      const domain = domainOf(check.address);
      if (!domain || !user.allowedFromDomains.includes(domain))
        return callback(rejection('senderNotAllowed'));
    }
    this.gated(this.quotaGate.mailFrom(session, this.tenantOf(session)), callback);
  }

  /** Answer with the quota gate's decision (an unexpected error is logged and answered 451 4.3.0). */
  private gated(decision: Promise<SmtpReplyError | undefined>, callback: Done): void {
    decision.then(
      (refusal) => callback(refusal),
      (err: unknown) => {
        this.log.error({ event: 'tenant-quota:error', err }, 'tenant quota check failed');
        callback(rejection('quotaUnavailable'));
      },
    );
  }

  onRcptTo(address: SMTPServerAddress, session: SMTPServerSession, callback: Done): void {
    if (this.closing()) return callback(rejection('shuttingDown'));
    const check = checkAddress(address.address, 'recipient');
    if (!check.ok) return callback(rejection('badRecipientSyntax', check.reason));
    const orcpt = dsnValueProblem('ORCPT', address.dsn?.orcpt, ORCPT_MAX);
    if (orcpt) return callback(rejection('badDsnParameter', orcpt));
    const rcpts = session.envelope.rcptTo;
    const key = address.address.toLowerCase();
    // A repeated recipient replaces the earlier one (smtp-server), so it does not count.
    const repeated = rcpts.some((r) => r.address.toLowerCase() === key);
    if (rcpts.length >= this.config.maxRecipients && !repeated)
      return callback(rejection('tooManyRecipients'));
    const quota = (): void => {
      if (repeated) return callback();
      this.gated(this.quotaGate.recipient(session, this.tenantOf(session)), callback);
    };
    const policy = this.recipientPolicy;
    if (!this.rejectSuppressed || !policy) return quota();
    policy.check([check.address]).then(
      (decision) => (decision.suppressed.length ? callback(rejection('recipientSuppressed')) : quota()),
      (err: unknown) => {
        if (!(err instanceof PolicyUnavailableError))
          this.log.error({ event: 'policy:error', err }, 'policy failed');
        callback(rejection('policyUnavailable'));
      },
    );
  }

  /**
   * An API key's allowed_from_domains for the message headers (message-headers.ts): every From: and Sender:
   * address must be in them, and there must be a From address. `section` is undefined when the header
   * section is larger than HEADER_SECTION_LIMIT.
   */
  senderHeadersRefusal(section: string | undefined, allowed: string[]): SmtpReplyError | undefined {
    if (section === undefined) {
      return rejection('headerSenderNotAllowed', `header section over ${HEADER_SECTION_LIMIT} bytes`);
    }
    const { from, sender } = senderHeaderAddresses(section);
    if (from.length === 0) return rejection('headerSenderNotAllowed', 'no From address');
    for (const address of [...from, ...sender]) {
      const check = checkAddress(address, 'sender');
      const domain = check.ok ? domainOf(check.address) : undefined;
      if (!domain || !allowed.includes(domain)) return rejection('headerSenderNotAllowed');
    }
    return undefined;
  }

  /**
   * The envelope to store: the checked sender and recipients, each mailbox once — deduplicated by the
   * canonical key (`"Victim"@x` and `victim@x` are one mailbox: one upstream RCPT, one token).
   */
  envelopeOf(session: SMTPServerSession): Envelope {
    const from = session.envelope.mailFrom;
    const sender = from ? checkAddress(from.address, 'sender') : undefined;
    const seen = new Set<string>();
    const recipients: string[] = [];
    const byRecipient: Record<string, RecipientDsn> = {};
    for (const r of session.envelope.rcptTo) {
      const c = checkAddress(r.address, 'recipient');
      const address = c.ok ? c.address : r.address;
      const key = c.ok ? c.key : address.toLowerCase();
      if (seen.has(key)) continue;
      seen.add(key);
      recipients.push(address);
      const dsn = recipientDsnOf(r);
      if (dsn) byRecipient[address] = dsn;
    }
    const envelope: Envelope = { mailFrom: sender?.ok ? sender.address : '', recipients };
    const dsn: EnvelopeDsn = {};
    const mailDsn = session.envelope.dsn;
    if (mailDsn?.ret === 'FULL' || mailDsn?.ret === 'HDRS') dsn.ret = mailDsn.ret;
    if (mailDsn?.envid) dsn.envid = mailDsn.envid;
    if (Object.keys(byRecipient).length) dsn.recipients = byRecipient;
    if (Object.keys(dsn).length) envelope.dsn = dsn;
    return envelope;
  }
}

/** A recipient's NOTIFY and ORCPT as smtp-server parsed them (only when DSN is offered). */
function recipientDsnOf(address: SMTPServerAddress): RecipientDsn | undefined {
  const parsed = address.dsn;
  if (!parsed) return undefined;
  const dsn: RecipientDsn = {};
  if (parsed.notify?.length) dsn.notify = parsed.notify as DsnNotifyKeyword[];
  if (parsed.orcpt) dsn.orcpt = parsed.orcpt;
  return Object.keys(dsn).length ? dsn : undefined;
}
