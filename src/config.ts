/**
 * The only module that reads the environment. `loadConfig(env)` validates every variable with envalid
 * and returns a typed, nested configuration (one section per stage). A bad value throws ConfigError,
 * naming the variable; main.ts prints that as one line and exits non-zero before listening.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import ipaddr from 'ipaddr.js';
import ms from 'ms';
import { bool, cleanEnv, makeValidator, port, str, EnvError, EnvMissingError } from 'envalid';

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

export interface Config {
  ingress: IngressConfig;
  spool: SpoolConfig;
  egress: EgressConfig;
  limiter: LimiterConfig;
  policy: PolicyConfig;
  observability: ObservabilityConfig;
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
      throw new ConfigError(variable, /PASSWORD/.test(variable) ? 'is invalid' : problem);
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

  return {
    ingress: {
      host: e.SMTP_HOST,
      port: e.SMTP_PORT,
      serverName: e.SERVER_FQDN || os.hostname(),
      implicitTls: e.ENABLE_SSL,
      tls,
      users: e.SMTP_USERS,
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
  };
}
