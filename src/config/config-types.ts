/**
 * The typed configuration: one section per stage, as loadConfig (src/config.ts) returns it. Stages import
 * only their own section's type (through src/config.ts).
 */
import type { TenantPolicy } from '../auth/tenant-policy';

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
