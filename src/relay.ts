/**
 * Builds the relay's parts from a Config and wires their start and stop:
 * ingress (SMTP listener) → spool → dispatcher (policy → admission → transport), observability beside; the
 * notifier (delivery status notifications, BOUNCE_FROM) and the queue-action socket on the spool.
 * The builders of each part are in relay-parts.ts. main.ts calls startRelay(); tests may call it in-process.
 *
 * Start order: spool (its lock first), policy, rate plan and admission, transport, dispatcher, notifier;
 * then the metrics and health server, delivery, the queue-control socket, the SMTP listener, the
 * autoresponder. Stop order: the control socket, then (together) the listeners and delivery within
 * SHUTDOWN_TIMEOUT, then everything delivery used, the spool, and the metrics server last.
 */
import type { AddressInfo } from 'node:net';
import type { Config } from './config';
import type { Spool } from './spool/spool';
import { SqliteSpool } from './spool/sqlite-spool';
import { createSmtpListener, type SmtpListener } from './ingress/smtp-listener';
import type { Authenticator } from './auth/authenticator';
import type { RecipientPolicy } from './policy/policy';
import { createTenantQuota, type TenantQuota } from './policy/tenant-quota';
import type { Transport } from './egress/transport/transport';
import type { RateAdmission } from './egress/rate/admission';
import { Dispatcher } from './egress/dispatcher';
import { registerQueueMetrics } from './egress/queue-metrics';
import { registry } from './observability/metrics';
import { startHttpServer, type HttpServer, type ReadinessReport } from './observability/http-server';
import type { Logger } from './observability/logger';
import type { Autoresponder } from './autoresponder/autoresponder';
import { withAutoresponderRoutes } from './autoresponder/routing-transport';
import type { Notifier } from './notifications/notifier';
import { registerNotificationMetrics } from './notifications/notification-metrics';
import { QueueControlServer } from './spool/queue-control';
import {
  buildAdmission,
  buildNotifier,
  buildPolicy,
  buildTransport,
  planRate,
  startAutoresponderFrontDoor,
  type RatePlan,
  type RelayOptions,
} from './relay-parts';

export type { RelayOptions } from './relay-parts';

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

/** Everything behind the listeners: built before anything listens. */
interface DeliveryParts {
  spool: SqliteSpool;
  policy: RecipientPolicy;
  authenticator?: Authenticator;
  /** Tenants' daily quotas: shared by the replicas of one LIMITER_ID with REDIS_URL, in memory otherwise. */
  quota: TenantQuota;
  plan: RatePlan;
  admission: RateAdmission;
  transport: Transport;
  dispatcher: Dispatcher;
  notifier?: Notifier;
}

/** What listens or serves, set as each one starts (so a failed start closes only what is open). */
interface Doors {
  http?: HttpServer;
  control?: QueueControlServer;
  smtp?: SmtpListener;
  autoresponder?: Autoresponder;
}

async function openSpool(config: Config, logger: Logger, notificationOwed: () => void): Promise<SqliteSpool> {
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
    onNotificationOwed: notificationOwed,
    // A queue tool acting on the stopped relay's spool holds the lock for one transaction: wait for it.
    lockWaitMs: 10_000,
  });
  registerQueueMetrics(spool);
  registerNotificationMetrics(() => spool.pendingNotificationCount());
  return spool;
}

/** Settings that work but surprise: said once at start. */
function warnAboutSetup(config: Config, spool: SqliteSpool, logger: Logger): void {
  const owed = spool.pendingNotificationCount();
  if (!config.notifications && owed > 0) {
    logger.warn(
      { event: 'notification:owed-unsent', owed },
      `${owed} delivery status notifications are owed but BOUNCE_FROM is unset: they wait until it is set again`,
    );
  }
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
}

async function buildDelivery(config: Config, options: RelayOptions): Promise<DeliveryParts> {
  const { logger } = options;
  // Set once the notifier exists; the spool calls it when a commit made a notification owed.
  const late: { notifier?: Notifier } = {};
  const spool = await openSpool(config, logger, () => late.notifier?.poke());
  warnAboutSetup(config, spool, logger);
  const { policy, authenticator } = buildPolicy(config, logger);
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
  const dispatcher = new Dispatcher({
    spool,
    transport,
    admission,
    policy,
    config: config.egress,
    failOpen: config.policy.failOpen,
    logger,
  });
  late.notifier = buildNotifier(config, spool, logger, () => dispatcher.wake());
  return {
    spool,
    policy,
    authenticator,
    quota,
    plan,
    admission,
    transport,
    dispatcher,
    notifier: late.notifier,
  };
}

/** /readyz: ready while the listener listens and the spool takes writes; the rest reports degradation. */
function readinessOf(config: Config, parts: DeliveryParts, doors: Doors): () => Promise<ReadinessReport> {
  return async () => {
    const writable = await parts.spool.isWritable();
    const checks: ReadinessReport['checks'] = {
      smtp: doors.smtp?.listening ? 'ok' : 'failing',
      spool: writable ? 'ok' : 'failing',
      // Degraded while delivery is paused: the spool cannot be written, or SES's daily quota is spent
      // or sending is paused for the account (ses_relay_quota_paused says which).
      delivery: parts.dispatcher.paused ? 'degraded' : 'ok',
      upstream: parts.transport.healthy() ? 'ok' : 'degraded',
      limiter: parts.admission.status().available ? 'ok' : 'degraded',
      suppressionList: parts.policy.healthy() ? 'ok' : 'degraded',
      ...(config.autoresponder ? { autoresponder: doors.autoresponder?.listening ? 'ok' : 'degraded' } : {}),
    };
    return { ready: checks.smtp === 'ok' && checks.spool === 'ok', checks };
  };
}

/** Start serving: metrics and health, delivery, the control socket, then the listeners. Fills `doors`. */
async function openDoors(
  config: Config,
  options: RelayOptions,
  parts: DeliveryParts,
  doors: Doors,
  readiness: () => Promise<ReadinessReport>,
): Promise<void> {
  const { logger } = options;
  const { spool, dispatcher } = parts;
  doors.http = await startHttpServer({
    host: config.observability.metricsHost,
    port: config.observability.metricsPort,
    registry,
    readiness,
    logger,
  });
  dispatcher.start();
  parts.notifier?.start();
  doors.control = await QueueControlServer.start({
    spoolDir: config.spool.dir,
    logger,
    act: async (action) => {
      const result = await spool.act(action);
      if (result.changed.length) dispatcher.wake();
      return result;
    },
  });
  doors.smtp = createSmtpListener({
    config: config.ingress,
    spool: wakingSpool(spool, () => dispatcher.wake()),
    authenticator: parts.authenticator,
    policy: parts.policy,
    rejectSuppressed: config.policy.useBlocklist && config.policy.action === 'reject',
    logger,
    quota: parts.quota,
  });
  await doors.smtp.listen();
  doors.autoresponder = await startAutoresponderFrontDoor(config, options, {
    spool,
    policy: parts.policy,
    wake: () => dispatcher.wake(),
  });
}

/**
 * Close in stop order. `graceMs` bounds the listeners' and delivery's drain (0 after a failed start).
 * Every failure is logged and the rest still closes; with `strict`, a failing spool close rejects.
 * Resolves with the messages left in the spool.
 */
async function closeAll(
  parts: DeliveryParts,
  doors: Doors,
  graceMs: number,
  logger: Logger,
  strict: boolean,
): Promise<number> {
  const quietly = (what: string, p: Promise<unknown> | undefined) =>
    p?.catch((err: unknown) => logger.warn({ err }, `${what} failed`));
  await quietly('queue control close', doors.control?.close());
  await Promise.all([
    quietly('SMTP listener close', doors.smtp?.close(graceMs)),
    quietly('autoresponder stop', doors.autoresponder?.stop(graceMs)),
    quietly('delivery stop', parts.dispatcher.stop(graceMs)),
  ]);
  await quietly('notifier stop', parts.notifier?.stop());
  await quietly('transport close', parts.transport.close());
  parts.plan.autoRate?.stop();
  parts.plan.account?.stop();
  await quietly('limiter stop', parts.admission.stop());
  await quietly('policy close', parts.policy.close());
  await quietly('tenant quota close', parts.quota.close());
  const left = parts.spool.counts().pending;
  await (strict ? parts.spool.close() : quietly('spool close', parts.spool.close()));
  await quietly('metrics server close', doors.http?.close());
  return left;
}

function logReady(config: Config, parts: DeliveryParts, doors: Doors, logger: Logger): void {
  const at = (a: AddressInfo | undefined) => a && `${a.address}:${a.port}`;
  logger.info(
    {
      event: 'relay:ready',
      smtp: at(doors.smtp?.address()),
      metrics: at(doors.http?.address()),
      autoresponder: at(doors.autoresponder?.address()),
      upstream: parts.transport.name,
      rate: parts.plan.rate,
      burst: parts.plan.burst,
      rateSource: parts.plan.account ? 'ses' : 'config',
      limiter: config.limiter.redisUrl ? 'redis' : 'local',
      queued: parts.spool.counts().pending,
      notifications: config.notifications ? config.notifications.bounceFrom : 'off',
      queueControl: doors.control?.path,
    },
    'ses-email-service ready',
  );
}

export async function startRelay(config: Config, options: RelayOptions): Promise<Relay> {
  const { logger } = options;
  const parts = await buildDelivery(config, options);
  const doors: Doors = {};
  const readiness = readinessOf(config, parts, doors);
  try {
    await openDoors(config, options, parts, doors, readiness);
  } catch (err) {
    await closeAll(parts, doors, 0, logger, false);
    throw err;
  }
  const smtpAddress = doors.smtp!.address();
  const metricsAddress = doors.http!.address();
  logReady(config, parts, doors, logger);

  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      const grace = config.egress.shutdownTimeoutMs;
      logger.info({ event: 'relay:stopping', graceMs: grace }, 'stopping: refusing new sessions, draining');
      const left = await closeAll(parts, doors, grace, logger, true);
      logger.info({ event: 'relay:stopped', queued: left }, 'stopped; queued mail stays in the spool');
    })();
    return stopping;
  };

  return {
    config,
    smtpAddress: () => smtpAddress,
    metricsAddress: () => metricsAddress,
    autoresponderAddress: () => doors.autoresponder?.address(),
    readiness,
    stop,
  };
}
