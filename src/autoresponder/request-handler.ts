/**
 * One request, from its header block to its result: the pure rules (request-rules.ts), DKIM when required,
 * the suppression list, the daily limit and Message-ID check (quota-store.ts, one atomic step), then every
 * reply built and stored in the spool in ONE commit (`storeGroup`, delivered in config order) BEFORE the
 * request gets its 250. A reply that could not be stored releases the quota claim and the request gets a
 * 4xx, so its sender retries it; nothing half-stored survives.
 *
 * One log line per request (`autoresponder:request`) with its result; the requester appears only as a
 * keyed hash (the same HMAC key as the quota store).
 *
 * The replies belong to the tenant `autoresponder` (priority normal, no policy): a share of the SES rate
 * of their own, beside the relayed mail's tenants.
 */
import { randomBytes } from 'node:crypto';
import type { AutoresponderConfig } from '../config';
import type { Logger } from '../observability/logger';
import { PolicyUnavailableError, type RecipientPolicy } from '../policy/policy';
import { SpoolWriteError, type GroupMessage, type OrderedGroupSpool } from '../spool/spool';
import { autoresponderMetrics } from './autoresponder-metrics';
import type { ResponderEntry } from './config-schema';
import type { ActiveConfig } from './config-source';
import type { IncomingRequest, RequestOutcome } from './autoresponder-listener';
import { QuotaUnavailableError, type QuotaClaim, type QuotaStore } from './quota-store';
import { buildReply, type ReplySettings } from './reply-builder';
import { SMTP_ROUTE } from './routing-transport';
import { checkRequest, dkimVerdict, isExempt, type RequestResult } from './request-rules';
import type { Tenant } from '../types';

/** The tenant of every autoresponder reply. */
export const AUTORESPONDER_TENANT: Tenant = Object.freeze({ name: 'autoresponder', priority: 'normal' });

export interface RequestHandlerOptions {
  config: AutoresponderConfig;
  active: () => ActiveConfig;
  quota: QuotaStore;
  policy: RecipientPolicy;
  spool: OrderedGroupSpool;
  /** Called after replies were stored (wakes the dispatcher). */
  stored: () => void;
  logger: Logger;
  now?: () => number;
}

/** One log line and one count per request. */
type Report = (result: RequestResult, extra?: Record<string, unknown>) => void;

const domainOf = (address: string) => address.slice(address.lastIndexOf('@') + 1).toLowerCase();

export class RequestHandler {
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly settings: ReplySettings;

  constructor(private readonly options: RequestHandlerOptions) {
    this.log = options.logger.child({ component: 'autoresponder' });
    this.now = options.now ?? Date.now;
    const c = options.config;
    this.settings = {
      from: c.from,
      fromAddress: c.fromAddress,
      dkim: c.dkim,
      dkimCacheDir: c.dkim ? c.dataDir : undefined,
    };
  }

  /** Domains a request must not come from (a loop with ourselves). */
  private ownDomains(active: ActiveConfig): string[] {
    const c = this.options.config;
    return [...new Set([...active.config.domains, domainOf(c.fromAddress), domainOf(c.returnPath)])];
  }

  async handle(request: IncomingRequest): Promise<RequestOutcome> {
    const requestId = randomBytes(6).toString('hex');
    const started = this.now();
    const report: Report = (result, extra = {}) => {
      autoresponderMetrics.requests.inc({ result });
      this.log.info(
        {
          event: 'autoresponder:request',
          requestId,
          result,
          addresses: request.addresses,
          client: request.client,
          ms: this.now() - started,
          ...extra,
        },
        `autoresponder request: ${result}`,
      );
    };
    const active = this.options.active();
    const entries = request.addresses.flatMap((a) => active.config.byAddress.get(a) ?? []);
    if (entries.length === 0) {
      // The addresses were removed from the configuration between RCPT and the end of DATA.
      report('temporary-failure', { problem: 'addresses no longer configured' });
      return { reply: 'temporary' };
    }
    const verdict = checkRequest(
      { envelopeSender: request.envelopeSender, ...request.parsed },
      { ownDomains: this.ownDomains(active), blockedDomains: this.options.config.blockedDomains },
    );
    if (!verdict.ok) {
      report(verdict.result);
      return { reply: 'accepted', requestId };
    }
    const gate = await this.gate(request, verdict.requester, verdict.requesterDomain, report);
    if ('reply' in gate)
      return gate.reply === 'accepted' ? { reply: 'accepted', requestId } : { reply: 'temporary' };
    return this.storeReplies(entries, active, request, verdict.requester, gate.claim, requestId, report);
  }

  /**
   * DKIM (when required), the suppression list and the daily limit, in that order: the request's outcome
   * when one of them decides it is not answered (or not now), else the quota claim it holds (none for an
   * exempt domain).
   */
  private async gate(
    request: IncomingRequest,
    requester: string,
    requesterDomain: string,
    report: Report,
  ): Promise<{ reply: 'accepted' | 'temporary' } | { claim?: QuotaClaim }> {
    const who = { requester: this.options.quota.requesterHash(requester) };
    if (request.dkim) {
      const dkim = await request.dkim;
      const v = dkimVerdict(dkim.results, dkim.headerFrom, requesterDomain);
      if (v === 'temperror') {
        report('temporary-failure', { ...who, problem: 'DKIM key lookup failed temporarily' });
        return { reply: 'temporary' };
      }
      if (v === 'fail') {
        report('dkim-failed', who);
        return { reply: 'accepted' };
      }
    }
    if (await this.suppressed(requester)) {
      report('suppressed', who);
      return { reply: 'accepted' };
    }
    if (isExempt(requesterDomain, this.options.config.exemptDomains)) return {};
    const claim: QuotaClaim = { requester, messageId: request.parsed.messageId, now: this.now() };
    let decision;
    try {
      decision = await this.options.quota.claim(claim);
    } catch (err) {
      if (!(err instanceof QuotaUnavailableError)) throw err;
      report('temporary-failure', { ...who, problem: err.message });
      return { reply: 'temporary' };
    }
    if (decision !== 'granted') {
      report(decision, who);
      return { reply: 'accepted' };
    }
    return { claim };
  }

  /** Every reply in ONE spool commit; on failure the claim is released and the request gets a 4xx. */
  private async storeReplies(
    entries: ResponderEntry[],
    active: ActiveConfig,
    request: IncomingRequest,
    requester: string,
    claim: QuotaClaim | undefined,
    requestId: string,
    report: Report,
  ): Promise<RequestOutcome> {
    const who = { requester: this.options.quota.requesterHash(requester) };
    try {
      const ids = await this.options.spool.storeGroup(this.replies(entries, active, request, requester));
      this.options.stored();
      autoresponderMetrics.replies.inc(ids.length);
      report('answered', { ...who, queueIds: ids });
      return { reply: 'accepted', requestId };
    } catch (err) {
      if (claim) await this.options.quota.release(claim);
      const storage = err instanceof SpoolWriteError;
      if (!storage)
        this.log.error({ event: 'autoresponder:error', requestId, err }, 'replies could not be built');
      report('temporary-failure', {
        ...who,
        problem: storage ? 'spool could not store the replies' : String(err),
      });
      return { reply: storage ? 'storage' : 'temporary' };
    }
  }

  /** The requester is on the suppression list (when it cannot be consulted: answer; delivery checks again). */
  private async suppressed(requester: string): Promise<boolean> {
    try {
      const decision = await this.options.policy.check([requester]);
      return decision.suppressed.length > 0;
    } catch (err) {
      if (!(err instanceof PolicyUnavailableError)) throw err;
      this.log.warn(
        { event: 'autoresponder:policy-unavailable', err: err.message },
        'suppression list unavailable: replies are stored and wait for it at delivery',
      );
      return false;
    }
  }

  private replies(
    entries: ResponderEntry[],
    active: ActiveConfig,
    request: IncomingRequest,
    requester: string,
  ): GroupMessage[] {
    const to = { requester, subject: request.parsed.subject, messageId: request.parsed.messageId };
    const built: GroupMessage[] = [];
    try {
      for (const entry of entries) {
        built.push({
          envelope: { mailFrom: this.options.config.returnPath, recipients: [requester] },
          body: buildReply(entry, active.attachments, to, this.settings),
          reception: { clientAddress: request.client, heloName: request.helo, tenant: AUTORESPONDER_TENANT },
          ...(entry.sendMethod === 'SMTP' ? { route: SMTP_ROUTE } : {}),
        });
      }
    } catch (err) {
      for (const m of built) m.body.destroy();
      throw err;
    }
    return built;
  }
}
