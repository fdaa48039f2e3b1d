/**
 * The recipient limiter: a token bucket counted in recipients (SES counts recipients, not messages).
 * Two implementations behind this interface: in-process (local-limiter.ts) and shared through Redis
 * (redis-limiter.ts, Bottleneck clustering), chosen in main.ts.
 *
 * Guarantee: over any window of W seconds, tokens granted <= rate * W + burst.
 */
import type { SendWindow } from './upstream-window';

export class LimiterUnavailableError extends Error {
  constructor(
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
    this.name = 'LimiterUnavailableError';
  }
}

export interface LimiterStatus {
  /** Recipients per second the limiter is set to (SES_RATE_LIMIT, or the rate read from SES with auto). */
  rate: number;
  /** Current rate after throttling slow-downs (<= rate). */
  effectiveRate: number;
  burst: number;
  /** False when the shared store is unreachable (delivery pauses). */
  available: boolean;
}

export interface RecipientLimiter {
  /**
   * Wait until `recipients` tokens are available and take them (recipients <= burst).
   * Rejects with LimiterUnavailableError when the limiter cannot grant safely, or when `signal` aborts.
   */
  acquire(recipients: number, signal?: AbortSignal): Promise<void>;
  /** SES answered `454 Throttling failure`: slow down for a while, then recover gradually. */
  throttled(): void;
  /**
   * Run at `rate` recipients per second from now on (SES_RATE_LIMIT=auto, when SES's MaxSendRate changed).
   * Tokens earned so far keep the old rate; the burst stays what it was at start; a slow-down after SES
   * throttling in progress starts over from the new rate. A RangeError for a rate that is not > 0.
   */
  setRate(rate: number): void;
  status(): LimiterStatus;
  /** Stop timers and connections; pending acquires reject. */
  stop(): Promise<void>;
  /**
   * A send-time window shared with other replicas (see upstream-window.ts), when the limiter has one;
   * otherwise the dispatcher keeps its own in-process window.
   */
  sendWindow?(): SendWindow;
}

/**
 * The argument and state checks every limiter's acquire() starts with: the error to reject with, or
 * undefined when the call may go on.
 */
export function acquireRefusal(
  recipients: number,
  burst: number,
  stopped: boolean,
  signal?: AbortSignal,
): Error | undefined {
  if (!Number.isInteger(recipients) || recipients < 0) {
    return new RangeError(`recipients must be a whole number >= 0, got ${recipients}`);
  }
  if (recipients > burst) {
    return new RangeError(`cannot acquire ${recipients} recipients at once: more than the burst of ${burst}`);
  }
  if (stopped) return new LimiterUnavailableError('limiter stopped');
  if (signal?.aborted) return new LimiterUnavailableError('acquire aborted', signal.reason);
  return undefined;
}
