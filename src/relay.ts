/**
 * Builds the relay's parts from a Config and wires their start and stop:
 * ingress (SMTP listener) → spool → dispatcher (policy → admission → transport), observability beside; the
 * notifier (delivery status notifications, BOUNCE_FROM) and the queue-action socket on the spool.
 * main.ts calls startRelay(); tests may call it in-process too.
 */
import type { AddressInfo } from 'node:net';
import type { Config } from './config';
import type { Spool } from './spool/spool';
import { SqliteSpool } from './spool/sqlite-spool';
import { createSmtpListener, type SmtpListener } from './ingress/smtp-listener';
import type { Authenticator } from './auth/authenticator';
import { authenticatorChain } from './auth/authenticator-chain';
import { StaticUserAuthenticator } from './auth/static-users';
import type { RecipientPolicy } from './policy/policy';
import { createDynamoPolicy } from './policy/policy-factory';
import { createTenantQuota } from './policy/tenant-quota';
import type { Transport } from './egress/transport/transport';
import { SesSmtpTransport } from './egress/transport/ses-smtp-transport';
import { SesApiTransport } from './egress/transport/ses-api-transport';
import { AutoRate, SesAccount } from './egress/rate/ses-account';
import { OutboxTransport } from './egress/transport/outbox-transport';
import type { RateAdmission } from './egress/rate/admission';
import { createAdmission } from './egress/rate/admission-factory';
import { Dispatcher } from './egress/dispatcher';
import { registerQueueMetrics } from './egress/queue-metrics';
import { registry } from './observability/metrics';
import { startHttpServer, type HttpServer, type ReadinessReport } from './observability/http-server';
import type { Logger } from './observability/logger';
import type { Autoresponder } from './autoresponder/autoresponder';
import type { DnsResolver } from './autoresponder/dkim-check';
import { withAutoresponderRoutes } from './autoresponder/routing-transport';
import { Notifier } from './notifications/notifier';
import { registerNotificationMetrics } from './notifications/notification-metrics';
import { QueueControlServer } from './spool/queue-control';

type AutoresponderModule = typeof import('./autoresponder/autoresponder');

export interface RelayOptions {
  logger: Logger;
  /** Extra trusted CAs for the upstream connection (tests; production uses NODE_EXTRA_CA_CERTS). */
  upstreamCa?: Buffer;
  /** DNS answers for the autoresponder's DKIM verification (tests); Node's resolver otherwise. */
  autoresponderDnsResolver?: DnsResolver;
}

export interface Relay {
  readonly config: Config;
  smtpAddress(): AddressInfo;
  metricsAddress(): AddressInfo;
  /** The autoresponder's listener, when AUTORESPONDER_CONFIG is set. */
  autoresponderAddress(): AddressInfo | undefined;
  readiness(): Promise<ReadinessReport>;
  /** Graceful stop: 421 to new sessions, finish in-flight transactions, stop delivery; bounded by SHUTDOWN_TIMEOUT. */
  stop(): Promise<void>;
}

/** The spool as the ingress sees it: every durable store wakes the dispatcher, so new mail leaves at once. */
function wakingSpool(spool: Spool, wake: () => void): Spool {
  return new Proxy(spool, {
    get(target, prop) {
      if (prop === 'store') {
        return async (...args: Parameters<Spool['store']>) => {
          const id = await target.store(...args);
          wake();
          return id;
        };
      }
      const value = Reflect.get(target, prop, target) as unknown;
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

/** Suppression list (USE_BLOCKLIST) and API-key AUTH (USE_APIKEY) from DynamoDB; allow-all otherwise. */
function buildPolicy(
  config: Config,
  logger: Logger,
): { policy: RecipientPolicy; authenticator?: Authenticator } {
  const { policy, apiKeys } = createDynamoPolicy(config.policy, logger);
  const users = config.ingress.users.length ? [new StaticUserAuthenticator(config.ingress.users)] : [];
  return { policy, authenticator: authenticatorChain([...users, ...(apiKeys ? [apiKeys] : [])]) };
}

/** The rate and burst to start with: configured, or (SES_RATE_LIMIT=auto) read from SES's GetAccount. */
interface RatePlan {
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
async function planRate(config: Config, logger: Logger): Promise<RatePlan> {
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

function buildAdmission(config: Config, logger: Logger, plan: RatePlan): Promise<RateAdmission> {
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

function buildTransport(config: Config, options: RelayOptions): Transport {
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
async function startAutoresponderFrontDoor(
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
function remoteMta(config: Config): string | undefined {
  const e = config.egress;
  if (e.transport === 'smtp') return e.sesHost;
  if (e.transport === 'api' && e.region) return `email.${e.region}.amazonaws.com`;
  return undefined;
}

/** The notifier when BOUNCE_FROM is set (undefined otherwise). */
function buildNotifier(config: Config, spool: SqliteSpool, logger: Logger, stored: () => void) {
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

export async function startRelay(config: Config, options: RelayOptions): Promise<Relay> {
  const { logger } = options;
  // Set once the dispatcher exists; the spool calls it when a commit made a notification owed.
  const late: { notifier?: Notifier } = {};
  const n = config.notifications;
  const spool = await SqliteSpool.open({
    dir: config.spool.dir,
    failedRetentionMs: config.spool.failedRetentionMs,
    logger,
    notifications: n && {
      bounceFrom: n.bounceFrom,
      delayWarningMs: n.delayWarningMs,
      maxQueueAgeMs: n.maxQueueAgeMs,
    },
    onNotificationOwed: () => late.notifier?.poke(),
    // A queue tool acting on the stopped relay's spool holds the lock for one transaction: wait for it.
    lockWaitMs: 10_000,
  });
  registerQueueMetrics(spool);
  registerNotificationMetrics(() => spool.pendingNotificationCount());
  const owed = spool.pendingNotificationCount();
  if (!n && owed > 0) {
    logger.warn(
      { event: 'notification:owed-unsent', owed },
      `${owed} delivery status notifications are owed but BOUNCE_FROM is unset: they wait until it is set again`,
    );
  }
  const { policy, authenticator } = buildPolicy(config, logger);
  // Tenants' daily quotas: shared by the replicas of one LIMITER_ID with REDIS_URL, in memory otherwise.
  const quota = createTenantQuota({
    redisUrl: config.limiter.redisUrl,
    limiterId: config.limiter.limiterId,
    logger,
  });
  const plan = await planRate(config, logger);
  const admission = await buildAdmission(config, logger, plan);
  plan.autoRate?.attach(admission);
  plan.account?.start();
  const transport = withAutoresponderRoutes(
    buildTransport(config, options),
    config.autoresponder,
    (id) => spool.routeOf(id),
    logger,
  );
  if (config.egress.transport === 'outbox') {
    logger.warn(
      { event: 'relay:embedded-mode', outboxDir: config.egress.outboxDir },
      `SES_TRANSPORT=outbox (the default without AWS_SMTP_HOST): embedded mode, mail is delivered as .eml files into ${config.egress.outboxDir} (nothing is sent to SES)`,
    );
  }
  const authConfigured = config.ingress.users.length > 0 || config.policy.useApiKey;
  if (authConfigured && !config.ingress.tls && !config.ingress.allowInsecureAuth) {
    logger.warn(
      { event: 'relay:auth-without-tls' },
      'AUTH is required but no TLS certificate is set: clients outside SMTP_TRUSTED_NETWORKS cannot authenticate (538 5.7.11). Set SSL_CERT_PATH and SSL_KEY_PATH, or SMTP_ALLOW_INSECURE_AUTH=true behind a TLS-terminating proxy.',
    );
  }
  const dispatcher = new Dispatcher({
    spool,
    transport,
    admission,
    policy,
    config: config.egress,
    failOpen: config.policy.failOpen,
    logger,
  });

  const notifier = buildNotifier(config, spool, logger, () => dispatcher.wake());
  late.notifier = notifier;

  let smtp: SmtpListener | undefined;
  let autoresponder: Autoresponder | undefined;
  let http: HttpServer | undefined;
  let control: QueueControlServer | undefined;
  const readiness = async (): Promise<ReadinessReport> => {
    const writable = await spool.isWritable();
    const checks: ReadinessReport['checks'] = {
      smtp: smtp?.listening ? 'ok' : 'failing',
      spool: writable ? 'ok' : 'failing',
      // Degraded while delivery is paused: the spool cannot be written, or SES's daily quota is spent
      // or sending is paused for the account (ses_relay_quota_paused says which).
      delivery: dispatcher.paused ? 'degraded' : 'ok',
      upstream: transport.healthy() ? 'ok' : 'degraded',
      limiter: admission.status().available ? 'ok' : 'degraded',
      suppressionList: policy.healthy() ? 'ok' : 'degraded',
      ...(config.autoresponder ? { autoresponder: autoresponder?.listening ? 'ok' : 'degraded' } : {}),
    };
    return { ready: checks.smtp === 'ok' && checks.spool === 'ok', checks };
  };

  try {
    http = await startHttpServer({
      host: config.observability.metricsHost,
      port: config.observability.metricsPort,
      registry,
      readiness,
      logger,
    });
    dispatcher.start();
    notifier?.start();
    control = await QueueControlServer.start({
      spoolDir: config.spool.dir,
      logger,
      act: async (action) => {
        const result = await spool.act(action);
        if (result.changed.length) dispatcher.wake();
        return result;
      },
    });
    smtp = createSmtpListener({
      config: config.ingress,
      spool: wakingSpool(spool, () => dispatcher.wake()),
      authenticator,
      policy,
      rejectSuppressed: config.policy.useBlocklist && config.policy.action === 'reject',
      logger,
      quota,
    });
    await smtp.listen();
    autoresponder = await startAutoresponderFrontDoor(config, options, {
      spool,
      policy,
      wake: () => dispatcher.wake(),
    });
  } catch (err) {
    await control?.close().catch(() => {});
    await smtp?.close(0).catch(() => {});
    await dispatcher.stop(0).catch(() => {});
    await notifier?.stop().catch(() => {});
    await http?.close().catch(() => {});
    await transport.close().catch(() => {});
    plan.autoRate?.stop();
    plan.account?.stop();
    await admission.stop().catch(() => {});
    await policy.close().catch(() => {});
    await quota.close().catch(() => {});
    await spool.close().catch(() => {});
    throw err;
  }

  const smtpAddress = smtp.address();
  const metricsAddress = http.address();
  logger.info(
    {
      event: 'relay:ready',
      smtp: `${smtpAddress.address}:${smtpAddress.port}`,
      metrics: `${metricsAddress.address}:${metricsAddress.port}`,
      autoresponder: autoresponder
        ? `${autoresponder.address().address}:${autoresponder.address().port}`
        : undefined,
      upstream: transport.name,
      rate: plan.rate,
      burst: plan.burst,
      rateSource: plan.account ? 'ses' : 'config',
      limiter: config.limiter.redisUrl ? 'redis' : 'local',
      queued: spool.counts().pending,
      notifications: n ? n.bounceFrom : 'off',
      queueControl: control?.path,
    },
    'ses-email-service ready',
  );

  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      const grace = config.egress.shutdownTimeoutMs;
      logger.info({ event: 'relay:stopping', graceMs: grace }, 'stopping: refusing new sessions, draining');
      await control?.close().catch((err) => logger.warn({ err }, 'queue control close failed'));
      await Promise.all([smtp!.close(grace), autoresponder?.stop(grace), dispatcher.stop(grace)]);
      await notifier?.stop();
      await transport.close().catch((err) => logger.warn({ err }, 'transport close failed'));
      plan.autoRate?.stop();
      plan.account?.stop();
      await admission.stop().catch((err) => logger.warn({ err }, 'limiter stop failed'));
      await policy.close().catch((err) => logger.warn({ err }, 'policy close failed'));
      await quota.close().catch((err) => logger.warn({ err }, 'tenant quota close failed'));
      const left = spool.counts();
      await spool.close();
      await http!.close();
      logger.info(
        { event: 'relay:stopped', queued: left.pending },
        'stopped; queued mail stays in the spool',
      );
    })();
    return stopping;
  };

  return {
    config,
    smtpAddress: () => smtpAddress,
    metricsAddress: () => metricsAddress,
    autoresponderAddress: () => autoresponder?.address(),
    readiness,
    stop,
  };
}
