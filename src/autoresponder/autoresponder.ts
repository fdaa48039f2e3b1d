/**
 * The autoresponder front door: a second ingress beside the relay's SMTP listener, feeding the same spool,
 * dispatcher, limiter, suppression filter and transports. relay.ts starts it when AUTORESPONDER_CONFIG is
 * set (`startAutoresponder`, loaded only then: mailauth, zod and the S3 client cost ~0.5 s of start-up) and
 * wraps the relay's transport when AUTORESPONDER_SMTP_URL is set (`withAutoresponderRoutes`, in
 * routing-transport.ts). See docs/autoresponder.md.
 *
 *   MX ──SMTP──▶ autoresponder-listener ──▶ request-handler ──storeGroup──▶ spool ──▶ dispatcher ──▶ SES
 *                 (RCPT rules, DATA)        (rules, DKIM, suppression,        (replies in order)  └▶ SMTP URL
 *                                            quota, reply-builder)
 *   config-source: file / S3, polled; attachments cached by ETag.   quota-store: DynamoDB or local SQLite.
 */
import type { AddressInfo } from 'node:net';
import type { S3Client } from '@aws-sdk/client-s3';
import type { AutoresponderConfig, IngressConfig } from '../config';
import type { Logger } from '../observability/logger';
import type { RecipientPolicy } from '../policy/policy';
import { createDynamoDbClient, type DynamoDbClientOptions } from '../policy/dynamodb-client';
import type { OrderedGroupSpool } from '../spool/spool';
import { createAutoresponderListener, type AddressBook } from './autoresponder-listener';
import { autoresponderMetrics } from './autoresponder-metrics';
import { ConfigSource, type ActiveConfig } from './config-source';
import type { DnsResolver } from './dkim-check';
import { DynamoQuotaStore, LocalQuotaStore, type QuotaStore } from './quota-store';
import { RequestHandler } from './request-handler';
import { REQUEST_RESULTS } from './request-rules';

export interface AutoresponderOptions {
  config: AutoresponderConfig;
  /** The relay's listener settings: server name, TLS certificate, size and client limits. */
  ingress: IngressConfig;
  spool: OrderedGroupSpool;
  policy: RecipientPolicy;
  /** New replies are in the spool: deliver now. */
  wake: () => void;
  logger: Logger;
  /** DNS for DKIM verification (tests); Node's resolver otherwise. */
  dnsResolver?: DnsResolver;
  s3?: S3Client;
  dynamodb?: DynamoDbClientOptions;
}

export interface Autoresponder {
  address(): AddressInfo;
  readonly listening: boolean;
  /** Graceful stop: 421 to new sessions, requests in DATA finish (bounded by graceMs). */
  stop(graceMs: number): Promise<void>;
}

function addressBook(active: ActiveConfig): AddressBook {
  const { byAddress, domains } = active.config;
  return { has: (key) => byAddress.has(key), hasDomain: (domain) => domains.includes(domain) };
}

function openQuota(options: AutoresponderOptions): QuotaStore {
  const c = options.config;
  const limits = { limit: c.dailyLimit, windowMs: c.quotaWindowMs };
  if (!c.quotaTable) return LocalQuotaStore.open(c.dataDir, c.hashKey, limits);
  const client = createDynamoDbClient(options.dynamodb);
  const store = new DynamoQuotaStore(client, c.quotaTable, c.hashKey!, limits);
  const close = store.close.bind(store);
  store.close = async () => {
    await close();
    if (!options.dynamodb?.client) client.destroy();
  };
  return store;
}

export async function startAutoresponder(options: AutoresponderOptions): Promise<Autoresponder> {
  const { config, logger } = options;
  const source = new ConfigSource({
    source: config.source,
    refreshMs: config.refreshMs,
    dataDir: config.dataDir,
    logger,
    s3: options.s3,
  });
  for (const result of REQUEST_RESULTS) autoresponderMetrics.requests.inc({ result }, 0);
  await source.start();
  let quota: QuotaStore | undefined;
  try {
    quota = openQuota(options);
    const handler = new RequestHandler({
      config,
      active: () => source.current(),
      quota,
      policy: options.policy,
      spool: options.spool,
      stored: options.wake,
      logger,
    });
    const listener = createAutoresponderListener({
      host: config.host,
      port: config.port,
      ingress: options.ingress,
      addresses: () => addressBook(source.current()),
      requireDkim: config.requireDkim,
      dnsResolver: options.dnsResolver,
      handle: (request) => handler.handle(request),
      logger,
    });
    await listener.listen();
    const q = quota;
    let stopping: Promise<void> | undefined;
    return {
      address: () => listener.address(),
      get listening() {
        return listener.listening;
      },
      stop(graceMs) {
        stopping ??= (async () => {
          await listener.close(graceMs);
          await source.close();
          await q.close();
        })();
        return stopping;
      },
    };
  } catch (err) {
    await source.close();
    await quota?.close();
    throw err;
  }
}
