/**
 * The delivery pause: when SES says the daily sending quota is spent (SMTP `454 Throttling failure:
 * Daily message quota exceeded`, or the API's error with that text) or that sending is paused for the
 * account (SendingPausedException, AccountSuspendedException), ALL delivery pauses — on every replica
 * when the state is shared through Redis — until SES takes mail again. Retrying each message on its own
 * schedule would only collect refusals (and age the queue) while SES waits for its 24-hour window to roll.
 *
 * While paused, at most one check per SES_QUOTA_PROBE_INTERVAL across all replicas (the back end's probe
 * claim), the first one an interval after the pause began:
 * - with GetAccount reachable (SES_TRANSPORT=api or SES_RATE_LIMIT=auto: the relay has AWS credentials),
 *   a spent quota resumes when `SentLast24Hours < Max24HourSend` (or the quota is unlimited); an account
 *   that GetAccount reports as not sending-enabled stays paused without a message going out;
 * - otherwise (or when GetAccount fails, or the account looks enabled after `sending-paused`, which may be
 *   a configuration set's pause that GetAccount does not show) one real message is let through as the
 *   probe: any answer but the same refusal resumes delivery, the same refusal keeps the pause.
 * Attempts refused because of the pause are not counted, and paused time does not count towards
 * MAX_QUEUE_AGE (pause-ledger.ts). Ingress keeps accepting. `ses_relay_quota_paused{reason}` is 1 while
 * paused; `delivery:paused` (warn; error for sending-paused, an operator must act) says when and why, and
 * `delivery:resumed` when it ended by itself.
 */
import type { Logger } from '../../observability/logger';
import type { AdmissionBackend, DeliveryPauseState, PauseReason } from './backend';
import { quotaProbes } from './admission-metrics';
import type { SesAccount } from './ses-account';

export interface DeliveryPauseOptions {
  backend: AdmissionBackend;
  probeIntervalMs: number;
  /** GetAccount, when the relay can call it. */
  account?: SesAccount;
  logger: Logger;
}

export type ProbeVerdict = 'send-probe' | 'wait';

export class DeliveryPause {
  private readonly backend: AdmissionBackend;
  private readonly logger: Logger;
  /** The pause last logged here (each start and end is logged once per replica). */
  private logged?: DeliveryPauseState;
  /** Why this replica ended the pause, for the resume line. */
  private resumedVia?: string;
  /** A pause this replica is starting (its refusal), while the back end records it. */
  private beginning?: { reason: PauseReason; reply?: string };
  private probing = false;

  constructor(private readonly options: DeliveryPauseOptions) {
    this.backend = options.backend;
    this.logger = options.logger;
    this.backend.onChange(() => this.report());
    this.report();
  }

  get probeIntervalMs(): number {
    return this.options.probeIntervalMs;
  }

  /** The pause in force, if any. */
  state(): DeliveryPauseState | undefined {
    return this.backend.reading().pause;
  }

  /** SES refused with `reason`: pause all delivery (a no-op when already paused). */
  async begin(reason: PauseReason, reply?: string): Promise<void> {
    this.beginning = { reason, reply };
    try {
      await this.backend.pause(reason, this.options.probeIntervalMs);
      this.report();
    } finally {
      this.beginning = undefined;
    }
  }

  /** The probe message got an answer other than the refusal that paused delivery: resume. */
  async probePassed(): Promise<void> {
    await this.end('a probe message was accepted (or answered otherwise) by SES');
  }

  private async end(via: string): Promise<void> {
    this.resumedVia = via;
    await this.backend.resume();
    this.report();
  }

  /**
   * Called by the dispatcher while paused: is a check due, and does it need a real message? Claims the
   * probe (one per interval across replicas) and reads GetAccount when it can.
   */
  async probe(): Promise<ProbeVerdict> {
    const pause = this.state();
    if (!pause || this.probing) return 'wait';
    this.probing = true;
    try {
      if (!(await this.backend.claimProbe(this.options.probeIntervalMs))) return 'wait';
      const account = this.options.account;
      if (!account) {
        quotaProbes.inc({ method: 'message' });
        return 'send-probe';
      }
      quotaProbes.inc({ method: 'get-account' });
      const q = await account.refresh();
      if (!q) {
        quotaProbes.inc({ method: 'message' });
        return 'send-probe'; // GetAccount failed: fall back to a real message
      }
      if (pause.reason === 'daily-quota-exceeded') {
        if (q.max24HourSend < 0 || q.sentLast24Hours < q.max24HourSend) {
          await this.end(
            `GetAccount: SentLast24Hours ${q.sentLast24Hours} < Max24HourSend ${q.max24HourSend}`,
          );
        }
        return 'wait';
      }
      if (q.sendingEnabled === false) return 'wait';
      quotaProbes.inc({ method: 'message' });
      return 'send-probe';
    } catch (err) {
      this.logger.warn({ err }, 'delivery paused: the probe check failed; trying again next interval');
      return 'wait';
    } finally {
      this.probing = false;
    }
  }

  /** Log each start and end of a pause once (whichever replica caused it). */
  private report(): void {
    const now = this.state();
    const before = this.logged;
    if (before && (!now || now.since !== before.since)) {
      this.logger.info(
        {
          event: 'delivery:resumed',
          reason: before.reason,
          pausedMs: Math.max(0, Date.now() - before.since),
          via: this.resumedVia ?? 'another replica ended the pause',
        },
        'delivery resumed: SES takes mail again',
      );
      this.logged = undefined;
      this.resumedVia = undefined;
    }
    if (now && (!before || now.since !== before.since)) {
      const here = this.beginning?.reason === now.reason;
      const line = {
        event: 'delivery:paused',
        reason: now.reason,
        since: new Date(now.since).toISOString(),
        reply: here ? this.beginning?.reply : undefined,
        origin: here ? 'this replica' : 'shared (another replica, or before a restart)',
        probeEveryMs: this.options.probeIntervalMs,
        method: this.options.account ? 'GetAccount' : 'probe message',
      };
      if (now.reason === 'sending-paused') {
        this.logger.error(
          line,
          'SES has paused or suspended sending for this account: ALL delivery paused, mail stays queued; an operator must act (AWS console: SES account dashboard)',
        );
      } else {
        this.logger.warn(
          line,
          'SES daily sending quota exceeded: ALL delivery paused until SES takes mail again',
        );
      }
      this.logged = now;
    }
  }
}
