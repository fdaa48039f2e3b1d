/**
 * A Transport that picks, per spooled message, which upstream it leaves through: the route recorded with
 * the message (`storeGroup`'s `route`, read back with `routeOf`) names one of `routes`; anything else
 * (relayed mail, `send_method: "SES"` replies) goes through the default transport (SES or the outbox).
 * The dispatcher sees one Transport and keeps its rate limit, retries and suppression filter for both.
 */
import type { AutoresponderConfig } from '../config';
import type { Logger } from '../observability/logger';
import type { MessageId } from '../types';
import type { RecipientResult, Transaction, Transport } from '../egress/transport/transport';
import { SmtpUrlTransport } from './smtp-url-transport';

/** The route name `send_method: "SMTP"` replies are stored with. */
export const SMTP_ROUTE = 'smtp';

export class RoutingTransport implements Transport {
  readonly name: string;

  constructor(
    private readonly base: Transport,
    private readonly routes: Readonly<Record<string, Transport>>,
    private readonly routeOf: (id: MessageId) => string | undefined,
    private readonly logger: Logger,
  ) {
    this.name = base.name;
  }

  /** The transport for one spooled message. */
  pick(id: MessageId): Transport {
    let route: string | undefined;
    try {
      route = this.routeOf(id);
    } catch (err) {
      this.logger.warn(
        { event: 'transport:route-unknown', queueId: id, err },
        'route lookup failed: default upstream',
      );
    }
    return (
      (route !== undefined && Object.hasOwn(this.routes, route) ? this.routes[route] : undefined) ?? this.base
    );
  }

  send(tx: Transaction): Promise<RecipientResult[]> {
    return this.pick(tx.id).send(tx);
  }

  healthy(): boolean {
    return this.base.healthy() && Object.values(this.routes).every((t) => t.healthy());
  }

  async close(): Promise<void> {
    await Promise.all(
      [this.base, ...Object.values(this.routes)].map((t) => t.close().catch(() => undefined)),
    );
  }
}

/**
 * With AUTORESPONDER_SMTP_URL, `send_method: "SMTP"` replies leave through that upstream: the relay's
 * transport is wrapped in a RoutingTransport that reads each message's route from the spool. Otherwise the
 * transport is returned as it is.
 */
export function withAutoresponderRoutes(
  transport: Transport,
  config: AutoresponderConfig | undefined,
  routeOf: (id: MessageId) => string | undefined,
  logger: Logger,
): Transport {
  if (!config?.smtpUrl) return transport;
  const smtp = new SmtpUrlTransport(config.smtpUrl, logger);
  return new RoutingTransport(transport, { [SMTP_ROUTE]: smtp }, routeOf, logger);
}
