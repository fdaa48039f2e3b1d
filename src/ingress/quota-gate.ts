/**
 * The ingress side of a tenant's daily quota (src/policy/tenant-quota.ts): which transactions may go on.
 *
 * - MAIL FROM: refused (451 4.7.1) when the quota is already spent — what was counted today plus the
 *   recipients of this process's transactions still in progress leaves no room for one more.
 * - RCPT TO: refused (451 4.7.1) when this recipient would exceed it, counting the recipients this
 *   transaction already has; a recipient given twice counts once. The client may send the accepted ones.
 * - Counted at the 250 (after fsync) with the recipients stored, never at RCPT: a transaction that fails
 *   (552, 452, a dropped connection) costs nothing.
 * - Recipients accepted at RCPT and not yet counted are held ("reserved") in this process: a check
 *   takes them into account and reserving happens in the same synchronous step as the comparison, so the
 *   sessions of one replica can never together go over the quota. A transaction's reservation ends when
 *   its 250's count is written, or with its next MAIL FROM or its connection (an RSET alone keeps it
 *   until then: that can only refuse more, never accept more).
 * - Across replicas (Redis) the check and the count are not atomic: replicas see each other's recipients
 *   only once acknowledged. So a day's count can exceed the quota by at most the recipients of the
 *   tenant's transactions in progress on OTHER replicas at the moment of a check — each at most
 *   SMTP_MAX_RECIPIENTS — and only on the last transactions before the quota is reached.
 * - Quota store unavailable (Redis down): 451 4.3.0, nothing accepted, the client retries.
 */
import type { SMTPServerSession } from 'smtp-server';
import type { Logger } from '../observability/logger';
import { tenantLabel } from '../observability/tenant-label';
import { TenantQuotaUnavailableError, type TenantQuota } from '../policy/tenant-quota';
import type { SmtpReplyError } from '../replies';
import type { Tenant } from '../types';
import { ingressMetrics, rejection } from './ingress-metrics';

interface Reservation {
  tenant: Tenant;
  recipients: number;
}

export class QuotaGate {
  private readonly sessions = new WeakMap<SMTPServerSession, Reservation>();
  /** Reserved recipients by tenant name (this process's transactions in progress). */
  private readonly reserved = new Map<string, number>();

  constructor(
    private readonly quota: TenantQuota,
    private readonly log: Logger,
  ) {}

  private reservedFor(name: string): number {
    return this.reserved.get(name) ?? 0;
  }

  /** End the session's transaction reservation (new MAIL FROM, end of DATA, connection closed). */
  release(session: SMTPServerSession): void {
    const r = this.sessions.get(session);
    if (!r) return;
    this.sessions.delete(session);
    this.unreserve(r);
  }

  private unreserve(r: Reservation): void {
    const left = this.reservedFor(r.tenant.name) - r.recipients;
    if (left > 0) this.reserved.set(r.tenant.name, left);
    else this.reserved.delete(r.tenant.name);
  }

  /** MAIL FROM: undefined to go on, else the refusal. */
  async mailFrom(session: SMTPServerSession, tenant: Tenant): Promise<SmtpReplyError | undefined> {
    this.release(session);
    if (tenant.dailyQuota === undefined) return undefined;
    return this.admit(tenant, 1, () => this.sessions.set(session, { tenant, recipients: 0 }));
  }

  /** RCPT TO of a new recipient of this transaction: undefined to accept it (and reserve it). */
  async recipient(session: SMTPServerSession, tenant: Tenant): Promise<SmtpReplyError | undefined> {
    if (tenant.dailyQuota === undefined) return undefined;
    return this.admit(tenant, 1, () => {
      let r = this.sessions.get(session);
      if (!r) {
        r = { tenant, recipients: 0 };
        this.sessions.set(session, r);
      }
      r.recipients += 1;
      this.reserved.set(tenant.name, this.reservedFor(tenant.name) + 1);
    });
  }

  /**
   * The 250 was sent: count the stored recipients. The reservation ends only once the count is written
   * (a Redis round trip), so no check of this process sees neither the reservation nor the count.
   */
  accepted(session: SMTPServerSession, tenant: Tenant, recipients: number): void {
    const r = this.sessions.get(session);
    this.sessions.delete(session);
    const done = () => {
      if (r) this.unreserve(r);
    };
    if (tenant.dailyQuota === undefined) return done();
    this.quota
      .add(tenant, recipients)
      .catch((err: unknown) => {
        const fields = {
          event: 'tenant-quota:count-failed',
          tenant: tenant.name,
          recipients,
          err: String(err),
        };
        this.log.warn(fields, 'accepted recipients could not be counted towards the daily quota');
      })
      .finally(done);
  }

  /**
   * `n` more recipients, with what this process holds for the tenant, fit in today's quota? When they do,
   * `reserve` runs in the same synchronous step as the comparison: another session's check, resolved in
   * the same tick, cannot slip in between and take the same last place.
   */
  private async admit(tenant: Tenant, n: number, reserve: () => void): Promise<SmtpReplyError | undefined> {
    let check;
    try {
      check = await this.quota.check(tenant, n);
    } catch (err) {
      if (!(err instanceof TenantQuotaUnavailableError)) throw err;
      this.log.warn(
        { event: 'tenant-quota:unavailable', tenant: tenant.name, err: err.message },
        err.message,
      );
      return rejection('quotaUnavailable');
    }
    // What this process holds is read after the answer and reserved in the same step: no two sessions of
    // one replica can both take the last place.
    const limit = check.limit ?? Infinity;
    if (check.used + this.reservedFor(tenant.name) + n <= limit) {
      reserve();
      return undefined;
    }
    ingressMetrics.tenantQuotaRefusals.inc({ tenant: tenantLabel(tenant) });
    this.log.info(
      { event: 'tenant-quota:exceeded', tenant: tenant.name, used: check.used, limit: check.limit },
      'daily quota of the tenant reached',
    );
    return rejection('dailyQuotaExceeded', `${check.limit ?? 0} recipients per UTC day`);
  }
}
