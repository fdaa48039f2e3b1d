/** Why admission refused a transaction (the dispatcher turns each into a deferral reason). */
import type { PauseReason } from './backend';

/** Admission cannot decide safely: the shared store is unreachable, admission stopped, or the wait aborted. */
export class LimiterUnavailableError extends Error {
  constructor(
    message: string,
    override readonly cause?: unknown,
  ) {
    super(message);
    this.name = 'LimiterUnavailableError';
  }
}

/** All delivery is paused (daily quota spent, or sending paused by SES): nothing goes but the probe. */
export class DeliveryPausedError extends Error {
  constructor(readonly reason: PauseReason) {
    super(`delivery paused: ${reason}`);
    this.name = 'DeliveryPausedError';
  }
}
