/**
 * The builders of the relay's parts from a Config (relay.ts wires their start and stop): the policy and
 * authenticators, the rate plan and admission, the transport, the notifier, the autoresponder front door.
 */
import type { Config } from './config';
import type { SqliteSpool } from './spool/sqlite-spool';
import type { Authenticator } from './auth/authenticator';
import { authenticatorChain } from './auth/authenticator-chain';
import { StaticUserAuthenticator } from './auth/static-users';
import type { RecipientPolicy } from './policy/policy';
import { createDynamoPolicy } from './policy/policy-factory';
import type { Transport } from './egress/transport/transport';
import { SesSmtpTransport } from './egress/transport/ses-smtp-transport';
import { SesApiTransport } from './egress/transport/ses-api-transport';
import { AutoRate, SesAccount } from './egress/rate/ses-account';
import { OutboxTransport } from './egress/transport/outbox-transport';
import type { RateAdmission } from './egress/rate/admission';
import { createAdmission } from './egress/rate/admission-factory';
import type { Logger } from './observability/logger';
import type { Autoresponder } from './autoresponder/autoresponder';
import type { DnsResolver } from './autoresponder/dkim-check';
import { Notifier } from './notifications/notifier';

type AutoresponderModule = typeof import('./autoresponder/autoresponder');

export interface RelayOptions {
  logger: Logger;
  /** Extra trusted CAs for the upstream connection (tests; production uses NODE_EXTRA_CA_CERTS). */
  upstreamCa?: Buffer;
  /** DNS answers for the autoresponder's DKIM verification (tests); Node's resolver otherwise. */
  autoresponderDnsResolver?: DnsResolver;
}

/** Suppression list (USE_BLOCKLIST) and API-key AUTH (USE_APIKEY) from DynamoDB; allow-all otherwise. */
export function buildPolicy(
  config: Config,
  logger: Logger,
): { policy: RecipientPolicy; authenticator?: Authenticator } {
  const { policy, apiKeys } = createDynamoPolicy(config.policy, logger);
  const users = config.ingress.users.length ? [new StaticUserAuthenticator(config.ingress.users)] : [];
  return { policy, authenticator: authenticatorChain([...users, ...(apiKeys ? [apiKeys] : [])]) };
}

/** The rate and burst to start with: configured, or (SES_RATE_LIMIT=auto) read from SES's GetAccount. */
export interface RatePlan {
  rate: number;
  burst: number;
  account?: SesAccount;
  autoRate?: AutoRate;
}

/**
 * GetAccount is read when the relay can call it: for SES_RATE_LIMIT=auto (the rate), and with the API
 * transport (its IAM identity): then a daily-quota pause ends by reading SendQuota instead of probing
 * with a real message.
 */
export async function planRate(config: Config, logger: Logger): Promise<RatePlan> {
  const l = config.limiter;
  const region = config.egress.region;
  if (!region || (!l.auto && config.egress.transport !== 'api')) return { rate: l.rate, burst: l.burst };
  const account = new SesAccount({ region, refreshMs: l.auto?.refreshMs ?? l.quotaRefreshMs, logger });
  if (!l.auto) return { rate: l.rate, burst: l.burst, account };
  const autoRate = new AutoRate(account, l.auto, logger);
  const rate = await autoRate.initialRate();
  // The burst is fixed for the process: one second of the rate SES grants now, unless SES_BURST is set.
  const burst = l.burstExplicit ? l.burst : Math.max(1, Math.ceil(rate));
  return { rate, burst, account, autoRate };
}

export function buildAdmission(config: Config, logger: Logger, plan: RatePlan): Promise<RateAdmission> {
  const l = config.limiter;
  return createAdmission({
    rate: plan.rate,
    burst: plan.burst,
    throttleFactor: l.throttleFactor,
    throttleRecoveryMs: l.throttleRecoveryMs,
    throttlePauseMs: l.throttlePauseMs,
    quotaProbeIntervalMs: l.quotaProbeIntervalMs,
    poolSize: config.egress.poolSize,
    redisUrl: l.redisUrl,
    limiterId: l.limiterId,
    heartbeatMs: l.heartbeatMs,
    stateDir: config.spool.dir,
    maxQueueAgeMs: config.egress.maxQueueAgeMs,
    account: plan.account,
    logger,
  });
}

export function buildTransport(config: Config, options: RelayOptions): Transport {
  const e = config.egress;
  if (e.transport === 'api' && e.region) {
    // Credentials: the SDK's default chain; endpoint: AWS_ENDPOINT_URL_SESV2, read by the SDK itself.
    return new SesApiTransport({
      region: e.region,
      configurationSet: e.configurationSet,
      connectionTimeoutMs: e.connectionTimeoutMs,
      name: `ses-api:${e.apiEndpoint ?? e.region}`,
      logger: options.logger,
    });
  }
  if (e.transport !== 'smtp' || !e.sesHost) {
    return new OutboxTransport({ dir: e.outboxDir, logger: options.logger });
  }
  return new SesSmtpTransport({
    host: e.sesHost,
    port: e.sesPort,
    secure: e.sesSecure,
    username: e.username ?? '',
    password: e.password ?? '',
    poolSize: e.poolSize,
    maxMessagesPerConnection: e.maxMessagesPerConnection,
    maxConnectionAgeMs: e.maxConnectionAgeMs,
    connectionTimeoutMs: e.connectionTimeoutMs,
    tls: options.upstreamCa ? { ca: options.upstreamCa } : undefined,
    configurationSet: e.configurationSet,
    logger: options.logger,
  });
}

/**
 * The autoresponder front door (AUTORESPONDER_CONFIG): its own MX-facing listener in front of the same
 * spool, suppression policy and dispatcher. Undefined when it is off.
 */
export async function startAutoresponderFrontDoor(
  config: Config,
  options: RelayOptions,
  parts: { spool: SqliteSpool; policy: RecipientPolicy; wake: () => void },
): Promise<Autoresponder | undefined> {
  if (!config.autoresponder) return undefined;
  // Loaded only when on: its parsers, DKIM verifier and S3 client would slow every start.
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { startAutoresponder } = require('./autoresponder/autoresponder') as AutoresponderModule;
  return startAutoresponder({
    config: config.autoresponder,
    ingress: config.ingress,
    spool: parts.spool,
    policy: parts.policy,
    wake: parts.wake,
    logger: options.logger,
    dnsResolver: options.autoresponderDnsResolver,
  });
}

/** Where SES is, for the notifications' Remote-MTA field. */
export function remoteMta(config: Config): string | undefined {
  const e = config.egress;
  if (e.transport === 'smtp') return e.sesHost;
  if (e.transport === 'api' && e.region) return `email.${e.region}.amazonaws.com`;
  return undefined;
}

/** The notifier when BOUNCE_FROM is set (undefined otherwise). */
export function buildNotifier(config: Config, spool: SqliteSpool, logger: Logger, stored: () => void) {
  const n = config.notifications;
  if (!n) return undefined;
  const settings = {
    from: n.from,
    bounceFrom: n.bounceFrom,
    reportingMta: n.reportingMta,
    remoteMta: remoteMta(config),
  };
  return new Notifier({ spool, settings, logger, stored });
}
