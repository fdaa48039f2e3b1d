/**
 * Every environment variable the relay reads, with its validator and default (documented here and in
 * README.md's configuration table, which a test checks against CONFIG_VARIABLES). Only src/config.ts
 * applies them to the environment.
 */
import { bool, cleanEnv, port, str } from 'envalid';
import {
  cidrList,
  domainList,
  duration,
  durationList,
  hashKey,
  httpUrl,
  logLevels,
  positiveInt,
  positiveNumber,
  rateOrAuto,
  smtpUrl,
  userList,
} from './validators';

export const DEFAULT_TRUSTED_NETWORKS = [
  '127.0.0.0/8',
  '::1/128',
  '10.0.0.0/8',
  '172.16.0.0/12',
  '192.168.0.0/16',
  'fc00::/7',
];

/** Specs, with defaults documented here and in README.md's configuration table. */
export const specs = {
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

/** The environment as validated by the specs (what the section functions read). */
export type CleanEnv = ReturnType<typeof cleanEnv<typeof specs>>;
