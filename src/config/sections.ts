/**
 * The sections of the configuration, one function per stage, each with its cross-variable checks (a
 * check names the variable to change). src/config.ts applies the specs to the environment and calls these.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseUserPolicyFile, UserPolicyFileError } from '../auth/tenant-policy';
import { ConfigError } from './config-error';
import type {
  AutoRateConfig,
  EgressConfig,
  EgressTransportKind,
  IngressConfig,
  LimiterConfig,
  NotificationsConfig,
  ObservabilityConfig,
  PolicyConfig,
  SmtpUser,
  SpoolConfig,
} from './config-types';
import { DEFAULT_TRUSTED_NETWORKS, type CleanEnv } from './specs';
import { bareAddress, readPem } from './validators';

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

/** The notifications section (undefined without BOUNCE_FROM), with its cross-variable checks. */
export function notificationsConfig(e: CleanEnv, serverName: string): NotificationsConfig | undefined {
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

/** TLS files of the listener (SSL_CERT_PATH, SSL_KEY_PATH), both or neither; ENABLE_SSL needs them. */
function listenerTls(e: CleanEnv): IngressConfig['tls'] {
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
  return tls;
}

/** SES_TRANSPORT (default: smtp when AWS_SMTP_HOST is set, else outbox) and what each one requires. */
export function egressTransport(e: CleanEnv): EgressTransportKind {
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
  if (e.SES_CONFIGURATION_SET && !/^[A-Za-z0-9_-]{1,64}$/.test(e.SES_CONFIGURATION_SET)) {
    throw new ConfigError(
      'SES_CONFIGURATION_SET',
      'must be 1-64 letters, digits, _ or - (an SES configuration set name)',
    );
  }
  return transport;
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

/** The SMTP listener. `rawMaxMessageSize`: SMTP_MAX_MESSAGE_SIZE as given (its default depends on the transport). */
export function ingressSection(
  e: CleanEnv,
  transport: EgressTransportKind,
  rawMaxMessageSize: string | undefined,
  dsn: boolean,
): IngressConfig {
  return {
    host: e.SMTP_HOST,
    port: e.SMTP_PORT,
    serverName: serverName(e),
    implicitTls: e.ENABLE_SSL,
    tls: listenerTls(e),
    users: withUserPolicies(e.SMTP_USERS, e.SMTP_USER_POLICY_FILE),
    trustedNetworks:
      e.SMTP_TRUSTED_NETWORKS ?? (e.SMTP_USERS.length || e.USE_APIKEY ? [] : DEFAULT_TRUSTED_NETWORKS),
    trustedNetworksExplicit: e.SMTP_TRUSTED_NETWORKS !== undefined,
    allowInsecureAuth: e.SMTP_ALLOW_INSECURE_AUTH,
    authMaxFailures: e.SMTP_AUTH_MAX_FAILURES,
    authLockoutMs: e.SMTP_AUTH_LOCKOUT,
    maxMessageSize: apiMessageSize(transport, e.SMTP_MAX_MESSAGE_SIZE, rawMaxMessageSize),
    maxRecipients: e.SMTP_MAX_RECIPIENTS,
    maxClients: e.SMTP_MAX_CLIENTS,
    socketTimeoutMs: e.SMTP_SOCKET_TIMEOUT,
    greetingDelayMs: e.SMTP_GREETING_DELAY,
    dsn,
  };
}

/** SERVER_FQDN, or the host name (the greeting, Received headers, Reporting-MTA). */
export function serverName(e: CleanEnv): string {
  return e.SERVER_FQDN || os.hostname();
}

export function spoolSection(e: CleanEnv): SpoolConfig {
  return { dir: path.resolve(e.SPOOL_DIR), failedRetentionMs: e.SPOOL_FAILED_RETENTION };
}

export function egressSection(e: CleanEnv, transport: EgressTransportKind, spoolDir: string): EgressConfig {
  if (e.RETRY_SCHEDULE.some((d) => d <= 0)) throw new ConfigError('RETRY_SCHEDULE', 'delays must be > 0');
  return {
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
  };
}

/** The rate SES grants and the reaction to its feedback (SES_RATE_*, SES_THROTTLE_*, REDIS_URL). */
export function limiterSection(e: CleanEnv, transport: EgressTransportKind): LimiterConfig {
  const auto = autoRate(e.SES_RATE_LIMIT, transport, e.AWS_REGION, {
    fraction: e.SES_RATE_FRACTION,
    fallbackRate: e.SES_RATE_FALLBACK,
    refreshMs: e.SES_QUOTA_REFRESH,
  });
  const rate = auto ? auto.fallbackRate : (e.SES_RATE_LIMIT as number);
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
  return {
    rate,
    burst: e.SES_BURST ?? Math.max(1, Math.ceil(rate)),
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
  };
}

/** The suppression list (USE_BLOCKLIST, or the original's USE_BLACKLIST) and API keys (USE_APIKEY). */
export function policySection(e: CleanEnv): PolicyConfig {
  const useBlocklist = e.USE_BLOCKLIST ?? e.USE_BLACKLIST ?? false;
  if (useBlocklist && !e.DYNAMODB_TABLE) {
    throw new ConfigError('DYNAMODB_TABLE', 'is required when USE_BLOCKLIST (or USE_BLACKLIST) is true');
  }
  if (e.USE_APIKEY && !e.DYNAMODB_API_KEYS_TABLE) {
    throw new ConfigError('DYNAMODB_API_KEYS_TABLE', 'is required when USE_APIKEY is true');
  }
  return {
    useBlocklist,
    table: e.DYNAMODB_TABLE || undefined,
    action: e.BLOCKLIST_ACTION as 'drop' | 'reject',
    failOpen: e.BLOCKLIST_FAIL_OPEN,
    cacheTtlMs: e.BLOCKLIST_CACHE_TTL,
    cacheMax: e.BLOCKLIST_CACHE_SIZE,
    useApiKey: e.USE_APIKEY,
    apiKeysTable: e.DYNAMODB_API_KEYS_TABLE || undefined,
    apiKeyCacheTtlMs: e.APIKEY_CACHE_TTL,
  };
}

export function observabilitySection(e: CleanEnv): ObservabilityConfig {
  return {
    metricsHost: e.METRICS_HOST,
    metricsPort: e.METRICS_PORT,
    logLevel: e.LOG_LEVEL as ObservabilityConfig['logLevel'],
  };
}
