/**
 * The only module that reads the environment. `loadConfig(env)` validates every variable with envalid
 * and returns a typed, nested configuration (one section per stage). A bad value throws ConfigError,
 * naming the variable; main.ts prints that as one line and exits non-zero before listening.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { domainToASCII } from 'node:url';
import ipaddr from 'ipaddr.js';
import ms from 'ms';
import { bool, cleanEnv, makeValidator, port, str, EnvError, EnvMissingError } from 'envalid';
import { parseUserPolicyFile, UserPolicyFileError, type TenantPolicy } from './auth/tenant-policy';

export class ConfigError extends Error {
  constructor(
    readonly variable: string,
    problem: string,
  ) {
    super(`${variable}: ${problem}`);
    this.name = 'ConfigError';
  }
}

/** A user allowed to AUTH: name and bcrypt hash (htpasswd -B format `user:$2y$...`). */
export interface SmtpUser {
  username: string;
  bcryptHash: string;
  /** The user's tenant policy from SMTP_USER_POLICY_FILE (absent: priority normal, no limits). */
  policy?: TenantPolicy;
}

export interface IngressConfig {
  host: string;
  port: number;
  serverName: string;
  /** Implicit TLS on the listener (ENABLE_SSL). */
  implicitTls: boolean;
  /** PEM certificate and key; when set (and not implicit TLS) STARTTLS is offered. */
  tls?: { cert: Buffer; key: Buffer; certPath: string; keyPath: string };
  users: SmtpUser[];
  /** CIDR ranges whose clients may send without AUTH. */
  trustedNetworks: string[];
  /** True when SMTP_TRUSTED_NETWORKS was set explicitly. */
  trustedNetworksExplicit: boolean;
  allowInsecureAuth: boolean;
  authMaxFailures: number;
  authLockoutMs: number;
  maxMessageSize: number;
  maxRecipients: number;
  maxClients: number;
  socketTimeoutMs: number;
  /** Delay before the 220 greeting (smtp-server's early-talker check; 0 = greet at once, as Postfix). */
  greetingDelayMs: number;
  /** Advertise DSN (RFC 3461) and keep its parameters: on when notifications are (BOUNCE_FROM). */
  dsn: boolean;
}

export interface SpoolConfig {
  dir: string;
  /** Failed messages are kept this long for inspection, then pruned. */
  failedRetentionMs: number;
}

/** How mail leaves: SES over SMTP, SES over the v2 API, or the embedded outbox (.eml files). */
export type EgressTransportKind = 'smtp' | 'api' | 'outbox';

export interface EgressConfig {
  /** SES_TRANSPORT (default: smtp when AWS_SMTP_HOST is set, else outbox). */
  transport: EgressTransportKind;
  /** AWS_REGION: the SES API's region (api transport, SES_RATE_LIMIT=auto). */
  region?: string;
  /** AWS_ENDPOINT_URL_SESV2 as validated here, for logs only: the SDK reads the variable itself. */
  apiEndpoint?: string;
  /** SES_CONFIGURATION_SET: default configuration set for relayed mail. */
  configurationSet?: string;
  /** SES SMTP endpoint (smtp transport). */
  sesHost?: string;
  sesPort: number;
  /** Implicit TLS upstream (port 465); otherwise STARTTLS is required. */
  sesSecure: boolean;
  username?: string;
  password?: string;
  outboxDir: string;
  poolSize: number;
  maxMessagesPerConnection: number;
  maxConnectionAgeMs: number;
  connectionTimeoutMs: number;
  /** SES's per-message recipient limit. */
  maxRecipientsPerTransaction: number;
  /** Retry delays after transient failures; the last one repeats. */
  retryScheduleMs: number[];
  maxQueueAgeMs: number;
  shutdownTimeoutMs: number;
}

/** SES_RATE_LIMIT=auto: the rate is read from SES (GetAccount's SendQuota.MaxSendRate). */
export interface AutoRateConfig {
  /** SES_RATE_FRACTION: share of MaxSendRate the relay uses (0 < f <= 1). */
  fraction: number;
  /** SES_RATE_FALLBACK: recipients per second while SES cannot be asked. */
  fallbackRate: number;
  /** SES_QUOTA_REFRESH: how often GetAccount is read again. */
  refreshMs: number;
}

export interface LimiterConfig {
  /** Recipients per second (with auto: the fallback, until SES has been read). */
  rate: number;
  /** Most recipients that may go out at once above the steady rate. */
  burst: number;
  /** True when SES_BURST was set (otherwise the burst is one second of the rate). */
  burstExplicit: boolean;
  /** Set when SES_RATE_LIMIT=auto. */
  auto?: AutoRateConfig;
  /** Repeated 454s (the rate is above SES's): the rate is multiplied by this (AIMD decrease). */
  throttleFactor: number;
  /** The additive increase climbs back by (1 − factor) of the rate over this long. */
  throttleRecoveryMs: number;
  /** After a 454 the bucket is drained and stays empty this long (SES's refills meanwhile). */
  throttlePauseMs: number;
  /** While delivery is paused (daily quota, sending paused): one check per this interval. */
  quotaProbeIntervalMs: number;
  /** SES_QUOTA_REFRESH: how often GetAccount is read when the relay reads it (auto, or the API transport). */
  quotaRefreshMs: number;
  redisUrl?: string;
  limiterId: string;
  heartbeatMs: number;
}

export interface PolicyConfig {
  useBlocklist: boolean;
  table?: string;
  action: 'drop' | 'reject';
  failOpen: boolean;
  cacheTtlMs: number;
  cacheMax: number;
  useApiKey: boolean;
  apiKeysTable?: string;
  apiKeyCacheTtlMs: number;
}

export interface ObservabilityConfig {
  metricsHost: string;
  metricsPort: number;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
}

/** Where AUTORESPONDER_CONFIG points: a local file or an S3 object. */
export type AutoresponderSource =
  { kind: 'file'; path: string } | { kind: 's3'; bucket: string; key: string };

/** The autoresponder front door (on when AUTORESPONDER_CONFIG is set); see docs/autoresponder.md. */
export interface AutoresponderConfig {
  source: AutoresponderSource;
  refreshMs: number;
  host: string;
  port: number;
  /** `From` of every reply as configured (may carry a display name). */
  from: string;
  /** The bare address of `from`. */
  fromAddress: string;
  /** Envelope sender of the replies. */
  returnPath: string;
  dailyLimit: number;
  quotaWindowMs: number;
  /** Lower-case ASCII domains; a subdomain matches too. */
  exemptDomains: string[];
  blockedDomains: string[];
  /** Shared DynamoDB quota table; undefined: a local SQLite table under the spool directory. */
  quotaTable?: string;
  /** HMAC-SHA-256 key for requester hashes (required with a shared table; generated and kept locally otherwise). */
  hashKey?: Buffer;
  /** Second upstream for `send_method: "SMTP"` replies (nodemailer URL); undefined: SES. */
  smtpUrl?: string;
  requireDkim: boolean;
  /** DKIM signing of `send_method: "SMTP"` replies. */
  dkim?: { domain: string; selector: string; privateKey: string };
  /** Working files: attachment cache, local quota database (`<SPOOL_DIR>/autoresponder`). */
  dataDir: string;
}

/** Delivery status notifications (RFC 3464) to senders; on when BOUNCE_FROM is set. */
export interface NotificationsConfig {
  /** The notifications' From header: BOUNCE_FROM as configured, or `Mail Delivery System <address>`. */
  from: string;
  /** Its bare address: the notifications' envelope sender (a verified SES identity). */
  bounceFrom: string;
  /** DELAY_WARNING_TIME; 0 = no delay warnings (the default, as Postfix's delay_warning_time). */
  delayWarningMs: number;
  /** Reporting-MTA of the reports (SERVER_FQDN). */
  reportingMta: string;
  /** MAX_QUEUE_AGE (Will-Retry-Until of delay warnings). */
  maxQueueAgeMs: number;
}

export interface Config {
  ingress: IngressConfig;
  spool: SpoolConfig;
  egress: EgressConfig;
  limiter: LimiterConfig;
  policy: PolicyConfig;
  observability: ObservabilityConfig;
  /** Undefined when the autoresponder is off (AUTORESPONDER_CONFIG unset). */
  autoresponder?: AutoresponderConfig;
  /** Undefined when notifications are off (BOUNCE_FROM unset): senders hear nothing, as before. */
  notifications?: NotificationsConfig;
}

export const DEFAULT_TRUSTED_NETWORKS = [
  '127.0.0.0/8',
  '::1/128',
  '10.0.0.0/8',
  '172.16.0.0/12',
  '192.168.0.0/16',
  'fc00::/7',
];

const duration = makeValidator<number>((input) => {
  const value = ms(String(input).trim() as ms.StringValue);
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new EnvError(`not a duration (examples: 500ms, 30s, 5m, 5d)`);
  }
  return value;
});

const durationList = makeValidator<number[]>((input) => {
  const parts = String(input)
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean);
  if (parts.length === 0) throw new EnvError('empty list of durations');
  return parts.map((p) => {
    const v = ms(p as ms.StringValue);
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new EnvError(`"${p}" is not a duration`);
    return v;
  });
});

const positiveNumber = makeValidator<number>((input) => {
  const v = Number(input);
  if (String(input).trim() === '' || !Number.isFinite(v) || v <= 0)
    throw new EnvError('must be a number > 0');
  return v;
});

/** SES_RATE_LIMIT: recipients per second, or `auto` (read from SES). */
const rateOrAuto = makeValidator<number | 'auto'>((input) => {
  if (String(input).trim().toLowerCase() === 'auto') return 'auto';
  const v = Number(input);
  if (String(input).trim() === '' || !Number.isFinite(v) || v <= 0)
    throw new EnvError('must be a number > 0 or auto');
  return v;
});

const httpUrl = makeValidator<string>((input) => {
  const s = String(input).trim();
  if (s === '') return '';
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw new EnvError('must be an http:// or https:// URL');
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw new EnvError('must be an http:// or https:// URL');
  return s;
});

const positiveInt = makeValidator<number>((input) => {
  const v = Number(input);
  if (!Number.isInteger(v) || v <= 0) throw new EnvError('must be a whole number > 0');
  return v;
});

const cidrList = makeValidator<string[]>((input) => {
  const list = String(input)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const c of list) {
    if (!ipaddr.isValidCIDR(c) && !ipaddr.isValid(c))
      throw new EnvError(`"${c}" is not a CIDR range or address`);
  }
  return list.map((c) =>
    ipaddr.isValidCIDR(c) ? c : `${c}/${ipaddr.parse(c).kind() === 'ipv4' ? 32 : 128}`,
  );
});

const userList = makeValidator<SmtpUser[]>((input) => {
  const entries = String(input)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return entries.map((e) => {
    const i = e.indexOf(':');
    const username = i > 0 ? e.slice(0, i) : '';
    const hash = i > 0 ? e.slice(i + 1) : '';
    // Do not echo the entry: it carries a password hash.
    if (!username) throw new EnvError('each entry must be user:bcrypt-hash (htpasswd -B format)');
    if (!/^\$2[abxy]\$\d{2}\$[./A-Za-z0-9]{53}$/.test(hash)) {
      throw new EnvError(`the entry for "${username}" is not a bcrypt hash (htpasswd -nbB user password)`);
    }
    return { username, bcryptHash: hash };
  });
});

const domainList = makeValidator<string[]>((input) => {
  const list = String(input)
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  return list.map((d) => {
    const ascii = domainToASCII(d.toLowerCase().replace(/^@/, ''));
    if (!ascii || !ascii.includes('.')) throw new EnvError(`"${d}" is not a domain`);
    return ascii;
  });
});

/** A secret: the value is never echoed in the error. */
const hashKey = makeValidator<string>((input) => {
  const v = String(input);
  if (v !== '' && v.length < 16)
    throw new EnvError('must be at least 16 characters (e.g. openssl rand -hex 32)');
  return v;
});

const smtpUrl = makeValidator<string>((input) => {
  const v = String(input).trim();
  if (v === '') return v;
  let url: URL;
  try {
    url = new URL(v);
  } catch {
    throw new EnvError('is not a URL (smtp://host:port or smtps://user:password@host:465)');
  }
  if (!/^smtps?:$/.test(url.protocol) || !url.hostname) {
    throw new EnvError('must be smtp://host[:port] or smtps://host[:port] (credentials may be in the URL)');
  }
  return v;
});

const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

/** Specs, with defaults documented here and in README.md's configuration table. */
const specs = {
  SMTP_HOST: str({ default: '0.0.0.0', desc: 'Address the SMTP listener binds' }),
  SMTP_PORT: port({ default: 1025 }),
  SERVER_FQDN: str({ default: '' }),
  ENABLE_SSL: bool({ default: false }),
  SSL_CERT_PATH: str({ default: '' }),
  SSL_KEY_PATH: str({ default: '' }),
  SMTP_USERS: userList({ default: [] }),
  SMTP_USER_POLICY_FILE: str({ default: '' }),
  SMTP_TRUSTED_NETWORKS: cidrList({ default: undefined }),
  SMTP_ALLOW_INSECURE_AUTH: bool({ default: false }),
  SMTP_AUTH_MAX_FAILURES: positiveInt({ default: 5 }),
  SMTP_AUTH_LOCKOUT: duration({ default: 5 * 60_000 }),
  SMTP_MAX_MESSAGE_SIZE: positiveInt({ default: 40 * 1024 * 1024 }),
  SMTP_MAX_RECIPIENTS: positiveInt({ default: 1000 }),
  SMTP_MAX_CLIENTS: positiveInt({ default: 1000 }),
  SMTP_SOCKET_TIMEOUT: duration({ default: 5 * 60_000 }),
  SMTP_GREETING_DELAY: duration({ default: 0 }),

  SPOOL_DIR: str({ default: './spool' }),
  SPOOL_FAILED_RETENTION: duration({ default: 7 * 24 * 3600_000 }),

  SES_TRANSPORT: str({ choices: ['smtp', 'api', 'outbox'], default: undefined }),
  AWS_REGION: str({ default: '' }),
  AWS_ENDPOINT_URL_SESV2: httpUrl({ default: '' }),
  SES_CONFIGURATION_SET: str({ default: '' }),
  AWS_SMTP_HOST: str({ default: '' }),
  AWS_SMTP_PORT: port({ default: 587 }),
  AWS_SMTP_USERNAME: str({ default: '' }),
  AWS_SMTP_PASSWORD: str({ default: '' }),
  OUTBOX_DIR: str({ default: '' }),
  SES_POOL_SIZE: positiveInt({ default: 4 }),
  SES_MAX_MESSAGES_PER_CONNECTION: positiveInt({ default: 100 }),
  SES_MAX_CONNECTION_AGE: duration({ default: 5 * 60_000 }),
  SES_CONNECTION_TIMEOUT: duration({ default: 30_000 }),
  RETRY_SCHEDULE: durationList({
    default: [5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000, 1_200_000],
  }),
  MAX_QUEUE_AGE: duration({ default: 5 * 24 * 3600_000 }),
  SHUTDOWN_TIMEOUT: duration({ default: 25_000 }),
  BOUNCE_FROM: str({ default: '' }),
  DELAY_WARNING_TIME: duration({ default: 0 }),

  SES_RATE_LIMIT: rateOrAuto({ default: 14 }),
  SES_RATE_FRACTION: positiveNumber({ default: 1 }),
  SES_RATE_FALLBACK: positiveNumber({ default: 1 }),
  SES_QUOTA_REFRESH: duration({ default: 5 * 60_000 }),
  SES_BURST: positiveInt({ default: undefined }),
  SES_THROTTLE_FACTOR: positiveNumber({ default: 0.8 }),
  SES_THROTTLE_RECOVERY: duration({ default: 60_000 }),
  SES_THROTTLE_PAUSE: duration({ default: 1000 }),
  SES_QUOTA_PROBE_INTERVAL: duration({ default: 60_000 }),
  REDIS_URL: str({ default: '' }),
  LIMITER_ID: str({ default: 'ses-email-service' }),
  LIMITER_HEARTBEAT: duration({ default: 50 }),

  USE_BLOCKLIST: bool({ default: undefined }),
  USE_BLACKLIST: bool({ default: undefined }),
  DYNAMODB_TABLE: str({ default: '' }),
  BLOCKLIST_ACTION: str({ choices: ['drop', 'reject'], default: 'drop' }),
  BLOCKLIST_FAIL_OPEN: bool({ default: false }),
  BLOCKLIST_CACHE_TTL: duration({ default: 60_000 }),
  BLOCKLIST_CACHE_SIZE: positiveInt({ default: 100_000 }),
  USE_APIKEY: bool({ default: false }),
  DYNAMODB_API_KEYS_TABLE: str({ default: '' }),
  APIKEY_CACHE_TTL: duration({ default: 60_000 }),

  AUTORESPONDER_CONFIG: str({ default: '' }),
  AUTORESPONDER_CONFIG_REFRESH: duration({ default: 60_000 }),
  AUTORESPONDER_HOST: str({ default: '0.0.0.0' }),
  AUTORESPONDER_PORT: port({ default: 2525 }),
  AUTORESPONDER_FROM: str({ default: '' }),
  AUTORESPONDER_RETURN_PATH: str({ default: '' }),
  AUTORESPONDER_DAILY_LIMIT: positiveInt({ default: 3 }),
  AUTORESPONDER_QUOTA_WINDOW: duration({ default: 24 * 3600_000 }),
  AUTORESPONDER_EXEMPT_DOMAINS: domainList({ default: [] }),
  AUTORESPONDER_BLOCKED_DOMAINS: domainList({ default: [] }),
  AUTORESPONDER_QUOTA_TABLE: str({ default: '' }),
  AUTORESPONDER_HASH_KEY: hashKey({ default: '' }),
  AUTORESPONDER_SMTP_URL: smtpUrl({ default: '' }),
  AUTORESPONDER_REQUIRE_DKIM: bool({ default: false }),
  DKIM_DOMAIN: str({ default: '' }),
  DKIM_SELECTOR: str({ default: '' }),
  DKIM_PRIVATE_KEY_PATH: str({ default: '' }),

  METRICS_HOST: str({ default: '0.0.0.0' }),
  METRICS_PORT: port({ default: 9464 }),
  LOG_LEVEL: str({ choices: [...logLevels], default: 'info' }),
};

/** Every variable name the relay reads (for docs and tests). */
export const CONFIG_VARIABLES = Object.keys(specs);

function readPem(variable: string, file: string): Buffer {
  try {
    const data = fs.readFileSync(file);
    if (!data.includes('-----BEGIN')) throw new ConfigError(variable, `${file} is not a PEM file`);
    return data;
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(
      variable,
      `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`,
    );
  }
}

/** The SES API limit on the raw message: 40 MB after base64 (ses-api-transport.ts), i.e. 30 MiB raw. */
export const SES_API_MAX_RAW_MESSAGE_SIZE = 30 * 1024 * 1024;

/** SMTP_MAX_MESSAGE_SIZE: with the API, the default shrinks to what SES's API accepts and more is refused. */
function apiMessageSize(transport: EgressTransportKind, size: number, raw: string | undefined): number {
  if (transport !== 'api') return size;
  if (raw === undefined || raw.trim() === '') return SES_API_MAX_RAW_MESSAGE_SIZE;
  if (size > SES_API_MAX_RAW_MESSAGE_SIZE) {
    throw new ConfigError(
      'SMTP_MAX_MESSAGE_SIZE',
      `must be at most ${SES_API_MAX_RAW_MESSAGE_SIZE} with SES_TRANSPORT=api (SES's 40 MB limit applies after base64 encoding)`,
    );
  }
  return size;
}

function autoRate(
  limit: number | 'auto',
  transport: EgressTransportKind,
  region: string,
  settings: AutoRateConfig,
): AutoRateConfig | undefined {
  if (settings.fraction > 1)
    throw new ConfigError('SES_RATE_FRACTION', 'must be at most 1 (a share of MaxSendRate)');
  if (limit !== 'auto') return undefined;
  if (transport === 'outbox') {
    throw new ConfigError(
      'SES_RATE_LIMIT',
      'auto reads the rate from SES: it needs SES_TRANSPORT=smtp or api',
    );
  }
  if (!region)
    throw new ConfigError('AWS_REGION', 'is required when SES_RATE_LIMIT=auto (GetAccount is regional)');
  if (settings.refreshMs < 10_000) throw new ConfigError('SES_QUOTA_REFRESH', 'must be at least 10s');
  return settings;
}

/** `Name <addr@domain>` or `addr@domain` -> the bare address, or undefined when it is not one address. */
function bareAddress(value: string): string | undefined {
  const m = /^\s*(?:[^<>]*<\s*([^<>\s]+)\s*>|([^<>\s]+))\s*$/.exec(value);
  const address = m?.[1] ?? m?.[2];
  if (!address) return undefined;
  const at = address.lastIndexOf('@');
  if (at <= 0 || !/^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$/.test(address.slice(0, at))) return undefined;
  const domain = domainToASCII(address.slice(at + 1).toLowerCase());
  return domain && domain.includes('.') ? `${address.slice(0, at)}@${domain}` : undefined;
}

function autoresponderSource(value: string): AutoresponderSource {
  if (!value.startsWith('s3://')) return { kind: 'file', path: path.resolve(value) };
  const m = /^s3:\/\/([^/]+)\/(.+)$/.exec(value);
  if (!m) throw new ConfigError('AUTORESPONDER_CONFIG', 'must be a file path or s3://bucket/key');
  return { kind: 's3', bucket: m[1], key: m[2] };
}

/** SMTP_USERS with their policies from SMTP_USER_POLICY_FILE (src/auth/tenant-policy.ts validates it). */
function withUserPolicies(users: SmtpUser[], file: string): SmtpUser[] {
  if (!file) return users;
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new ConfigError('SMTP_USER_POLICY_FILE', `cannot read ${file}: ${code}`);
  }
  try {
    const policies = parseUserPolicyFile(
      text,
      users.map((u) => u.username),
    );
    return users.map((u) => (policies.has(u.username) ? { ...u, policy: policies.get(u.username) } : u));
  } catch (err) {
    if (err instanceof UserPolicyFileError) throw new ConfigError('SMTP_USER_POLICY_FILE', err.message);
    throw err;
  }
}

type CleanEnv = ReturnType<typeof cleanEnv<typeof specs>>;

/** The notifications section (undefined without BOUNCE_FROM), with its cross-variable checks. */
function notificationsConfig(e: CleanEnv, serverName: string): NotificationsConfig | undefined {
  if (!e.BOUNCE_FROM.trim()) {
    if (e.DELAY_WARNING_TIME > 0)
      throw new ConfigError('DELAY_WARNING_TIME', 'needs BOUNCE_FROM (delay warnings are notifications)');
    return undefined;
  }
  const bounceFrom = bareAddress(e.BOUNCE_FROM);
  if (!bounceFrom) {
    throw new ConfigError(
      'BOUNCE_FROM',
      'is not an address (mailer-daemon@example.com, or Name <mailer-daemon@example.com>)',
    );
  }
  if (e.DELAY_WARNING_TIME > 0 && e.DELAY_WARNING_TIME >= e.MAX_QUEUE_AGE) {
    throw new ConfigError('DELAY_WARNING_TIME', 'must be shorter than MAX_QUEUE_AGE');
  }
  const from = e.BOUNCE_FROM.includes('<') ? e.BOUNCE_FROM.trim() : `Mail Delivery System <${bounceFrom}>`;
  return {
    from,
    bounceFrom,
    delayWarningMs: e.DELAY_WARNING_TIME,
    reportingMta: serverName,
    maxQueueAgeMs: e.MAX_QUEUE_AGE,
  };
}

/** The autoresponder section, with its cross-variable checks (undefined when AUTORESPONDER_CONFIG is unset). */
function autoresponderConfig(e: CleanEnv, spoolDir: string): AutoresponderConfig | undefined {
  if (!e.AUTORESPONDER_CONFIG) return undefined;
  const source = autoresponderSource(e.AUTORESPONDER_CONFIG);
  if (!e.AUTORESPONDER_FROM)
    throw new ConfigError('AUTORESPONDER_FROM', 'is required when AUTORESPONDER_CONFIG is set');
  const fromAddress = bareAddress(e.AUTORESPONDER_FROM);
  if (!fromAddress)
    throw new ConfigError(
      'AUTORESPONDER_FROM',
      'is not an address (name <user@example.org> or user@example.org)',
    );
  const returnPath = e.AUTORESPONDER_RETURN_PATH ? bareAddress(e.AUTORESPONDER_RETURN_PATH) : fromAddress;
  if (!returnPath) throw new ConfigError('AUTORESPONDER_RETURN_PATH', 'is not an address (user@example.org)');
  if (e.AUTORESPONDER_QUOTA_TABLE && !e.AUTORESPONDER_HASH_KEY) {
    throw new ConfigError(
      'AUTORESPONDER_HASH_KEY',
      'is required when AUTORESPONDER_QUOTA_TABLE is set (every replica must hash alike)',
    );
  }
  if (e.AUTORESPONDER_PORT === e.SMTP_PORT)
    throw new ConfigError('AUTORESPONDER_PORT', 'must differ from SMTP_PORT');
  if (e.AUTORESPONDER_PORT === e.METRICS_PORT)
    throw new ConfigError('AUTORESPONDER_PORT', 'must differ from METRICS_PORT');
  if (e.AUTORESPONDER_CONFIG_REFRESH <= 0)
    throw new ConfigError('AUTORESPONDER_CONFIG_REFRESH', 'must be > 0');
  if (e.AUTORESPONDER_QUOTA_WINDOW < 1000)
    throw new ConfigError('AUTORESPONDER_QUOTA_WINDOW', 'must be at least 1s');
  let dkim: AutoresponderConfig['dkim'];
  const dkimSet = [e.DKIM_DOMAIN, e.DKIM_SELECTOR, e.DKIM_PRIVATE_KEY_PATH].filter(Boolean).length;
  if (dkimSet > 0) {
    const missing = !e.DKIM_DOMAIN
      ? 'DKIM_DOMAIN'
      : !e.DKIM_SELECTOR
        ? 'DKIM_SELECTOR'
        : 'DKIM_PRIVATE_KEY_PATH';
    if (dkimSet < 3) throw new ConfigError(missing, 'is required when another DKIM_* variable is set');
    const domain = domainToASCII(e.DKIM_DOMAIN.toLowerCase());
    if (!domain || !domain.includes('.')) throw new ConfigError('DKIM_DOMAIN', 'is not a domain');
    if (!/^[A-Za-z0-9][A-Za-z0-9._-]*$/.test(e.DKIM_SELECTOR))
      throw new ConfigError('DKIM_SELECTOR', 'is not a selector');
    const privateKey = readPem('DKIM_PRIVATE_KEY_PATH', e.DKIM_PRIVATE_KEY_PATH).toString('utf8');
    dkim = { domain, selector: e.DKIM_SELECTOR, privateKey };
  }
  return {
    source,
    refreshMs: e.AUTORESPONDER_CONFIG_REFRESH,
    host: e.AUTORESPONDER_HOST,
    port: e.AUTORESPONDER_PORT,
    from: e.AUTORESPONDER_FROM.trim(),
    fromAddress,
    returnPath,
    dailyLimit: e.AUTORESPONDER_DAILY_LIMIT,
    quotaWindowMs: e.AUTORESPONDER_QUOTA_WINDOW,
    exemptDomains: e.AUTORESPONDER_EXEMPT_DOMAINS,
    blockedDomains: e.AUTORESPONDER_BLOCKED_DOMAINS,
    quotaTable: e.AUTORESPONDER_QUOTA_TABLE || undefined,
    hashKey: e.AUTORESPONDER_HASH_KEY ? Buffer.from(e.AUTORESPONDER_HASH_KEY, 'utf8') : undefined,
    smtpUrl: e.AUTORESPONDER_SMTP_URL || undefined,
    requireDkim: e.AUTORESPONDER_REQUIRE_DKIM,
    dkim,
    dataDir: path.join(spoolDir, 'autoresponder'),
  };
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const e = cleanEnv(env, specs, {
    reporter: ({ errors }) => {
      const [variable, err] = Object.entries(errors)[0] ?? [];
      if (!variable || !err) return;
      const problem =
        err instanceof EnvMissingError
          ? 'is required'
          : String(err.message || err).replace(/^Invalid (\w+) input: /, 'invalid $1 ');
      // Secrets are never echoed: the validators of PASSWORD/USERS variables do not include the value.
      throw new ConfigError(variable, /PASSWORD|HASH_KEY/.test(variable) ? 'is invalid' : problem);
    },
  });

  // Cross-variable checks.
  let tls: IngressConfig['tls'];
  if (e.SSL_CERT_PATH || e.SSL_KEY_PATH) {
    if (!e.SSL_CERT_PATH) throw new ConfigError('SSL_CERT_PATH', 'is required when SSL_KEY_PATH is set');
    if (!e.SSL_KEY_PATH) throw new ConfigError('SSL_KEY_PATH', 'is required when SSL_CERT_PATH is set');
    tls = {
      cert: readPem('SSL_CERT_PATH', e.SSL_CERT_PATH),
      key: readPem('SSL_KEY_PATH', e.SSL_KEY_PATH),
      certPath: e.SSL_CERT_PATH,
      keyPath: e.SSL_KEY_PATH,
    };
  }
  if (e.ENABLE_SSL && !tls) throw new ConfigError('ENABLE_SSL', 'needs SSL_CERT_PATH and SSL_KEY_PATH');

  const transport = (e.SES_TRANSPORT ?? (e.AWS_SMTP_HOST ? 'smtp' : 'outbox')) as EgressTransportKind;
  if (transport === 'smtp' && !e.AWS_SMTP_HOST) {
    throw new ConfigError('AWS_SMTP_HOST', 'is required when SES_TRANSPORT=smtp');
  }
  if (transport === 'smtp' && (!e.AWS_SMTP_USERNAME || !e.AWS_SMTP_PASSWORD)) {
    const missing = !e.AWS_SMTP_USERNAME ? 'AWS_SMTP_USERNAME' : 'AWS_SMTP_PASSWORD';
    throw new ConfigError(missing, 'is required when AWS_SMTP_HOST is set');
  }
  if (transport === 'api' && !e.AWS_REGION) {
    throw new ConfigError(
      'AWS_REGION',
      'is required when SES_TRANSPORT=api (the SES region, e.g. eu-west-1)',
    );
  }
  const maxMessageSize = apiMessageSize(transport, e.SMTP_MAX_MESSAGE_SIZE, env.SMTP_MAX_MESSAGE_SIZE);
  if (e.SES_CONFIGURATION_SET && !/^[A-Za-z0-9_-]{1,64}$/.test(e.SES_CONFIGURATION_SET)) {
    throw new ConfigError(
      'SES_CONFIGURATION_SET',
      'must be 1-64 letters, digits, _ or - (an SES configuration set name)',
    );
  }
  const auto = autoRate(e.SES_RATE_LIMIT, transport, e.AWS_REGION, {
    fraction: e.SES_RATE_FRACTION,
    fallbackRate: e.SES_RATE_FALLBACK,
    refreshMs: e.SES_QUOTA_REFRESH,
  });
  const rate = auto ? auto.fallbackRate : (e.SES_RATE_LIMIT as number);

  const useBlocklist = e.USE_BLOCKLIST ?? e.USE_BLACKLIST ?? false;
  if (useBlocklist && !e.DYNAMODB_TABLE) {
    throw new ConfigError('DYNAMODB_TABLE', 'is required when USE_BLOCKLIST (or USE_BLACKLIST) is true');
  }
  if (e.USE_APIKEY && !e.DYNAMODB_API_KEYS_TABLE) {
    throw new ConfigError('DYNAMODB_API_KEYS_TABLE', 'is required when USE_APIKEY is true');
  }
  if (e.SES_THROTTLE_FACTOR >= 1) throw new ConfigError('SES_THROTTLE_FACTOR', 'must be below 1 (e.g. 0.8)');
  if (e.SES_THROTTLE_PAUSE > 60_000) throw new ConfigError('SES_THROTTLE_PAUSE', 'must be at most 1m');
  if (e.SES_QUOTA_PROBE_INTERVAL < 1000)
    throw new ConfigError(
      'SES_QUOTA_PROBE_INTERVAL',
      'must be at least 1s (GetAccount allows one call per second)',
    );
  if (e.REDIS_URL && !/^rediss?:\/\//.test(e.REDIS_URL)) {
    throw new ConfigError('REDIS_URL', 'must start with redis:// or rediss://');
  }
  if (e.RETRY_SCHEDULE.some((d) => d <= 0)) throw new ConfigError('RETRY_SCHEDULE', 'delays must be > 0');

  const spoolDir = path.resolve(e.SPOOL_DIR);
  const burst = e.SES_BURST ?? Math.max(1, Math.ceil(rate));
  const serverName = e.SERVER_FQDN || os.hostname();
  const notifications = notificationsConfig(e, serverName);

  return {
    ingress: {
      host: e.SMTP_HOST,
      port: e.SMTP_PORT,
      serverName,
      implicitTls: e.ENABLE_SSL,
      tls,
      users: withUserPolicies(e.SMTP_USERS, e.SMTP_USER_POLICY_FILE),
      trustedNetworks:
        e.SMTP_TRUSTED_NETWORKS ?? (e.SMTP_USERS.length || e.USE_APIKEY ? [] : DEFAULT_TRUSTED_NETWORKS),
      trustedNetworksExplicit: e.SMTP_TRUSTED_NETWORKS !== undefined,
      allowInsecureAuth: e.SMTP_ALLOW_INSECURE_AUTH,
      authMaxFailures: e.SMTP_AUTH_MAX_FAILURES,
      authLockoutMs: e.SMTP_AUTH_LOCKOUT,
      maxMessageSize,
      maxRecipients: e.SMTP_MAX_RECIPIENTS,
      maxClients: e.SMTP_MAX_CLIENTS,
      socketTimeoutMs: e.SMTP_SOCKET_TIMEOUT,
      greetingDelayMs: e.SMTP_GREETING_DELAY,
      dsn: notifications !== undefined,
    },
    spool: { dir: spoolDir, failedRetentionMs: e.SPOOL_FAILED_RETENTION },
    egress: {
      transport,
      region: e.AWS_REGION || undefined,
      apiEndpoint: e.AWS_ENDPOINT_URL_SESV2 || undefined,
      configurationSet: e.SES_CONFIGURATION_SET || undefined,
      sesHost: transport === 'smtp' ? e.AWS_SMTP_HOST : undefined,
      sesPort: e.AWS_SMTP_PORT,
      sesSecure: e.AWS_SMTP_PORT === 465,
      username: e.AWS_SMTP_USERNAME || undefined,
      password: e.AWS_SMTP_PASSWORD || undefined,
      outboxDir: path.resolve(e.OUTBOX_DIR || path.join(spoolDir, '..', 'outbox')),
      poolSize: e.SES_POOL_SIZE,
      maxMessagesPerConnection: e.SES_MAX_MESSAGES_PER_CONNECTION,
      maxConnectionAgeMs: e.SES_MAX_CONNECTION_AGE,
      connectionTimeoutMs: e.SES_CONNECTION_TIMEOUT,
      maxRecipientsPerTransaction: 50,
      retryScheduleMs: e.RETRY_SCHEDULE,
      maxQueueAgeMs: e.MAX_QUEUE_AGE,
      shutdownTimeoutMs: e.SHUTDOWN_TIMEOUT,
    },
    limiter: {
      rate,
      burst,
      burstExplicit: e.SES_BURST !== undefined,
      auto,
      throttleFactor: e.SES_THROTTLE_FACTOR,
      throttleRecoveryMs: e.SES_THROTTLE_RECOVERY,
      throttlePauseMs: e.SES_THROTTLE_PAUSE,
      quotaProbeIntervalMs: e.SES_QUOTA_PROBE_INTERVAL,
      quotaRefreshMs: Math.max(10_000, e.SES_QUOTA_REFRESH),
      redisUrl: e.REDIS_URL || undefined,
      limiterId: e.LIMITER_ID,
      heartbeatMs: e.LIMITER_HEARTBEAT,
    },
    policy: {
      useBlocklist,
      table: e.DYNAMODB_TABLE || undefined,
      action: e.BLOCKLIST_ACTION as 'drop' | 'reject',
      failOpen: e.BLOCKLIST_FAIL_OPEN,
      cacheTtlMs: e.BLOCKLIST_CACHE_TTL,
      cacheMax: e.BLOCKLIST_CACHE_SIZE,
      useApiKey: e.USE_APIKEY,
      apiKeysTable: e.DYNAMODB_API_KEYS_TABLE || undefined,
      apiKeyCacheTtlMs: e.APIKEY_CACHE_TTL,
    },
    observability: {
      metricsHost: e.METRICS_HOST,
      metricsPort: e.METRICS_PORT,
      logLevel: e.LOG_LEVEL as ObservabilityConfig['logLevel'],
    },
    autoresponder: autoresponderConfig(e, spoolDir),
    notifications,
  };
}
