/**
 * pino JSON logs. One line per accepted, delivered, deferred and failed message, each with `queueId`.
 * Bodies are never logged; secrets are redacted by path as a second line of defence.
 */
import pino from 'pino';

export type Logger = pino.Logger;

export function createLogger(level: string = 'info', destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: 'ses-email-service' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: {
        paths: [
          'password',
          '*.password',
          'pass',
          '*.pass',
          'auth.pass',
          'apiKey',
          '*.apiKey',
          'body',
          '*.body',
        ],
        censor: '[redacted]',
      },
    },
    destination,
  );
}

/** A logger that discards everything (tests, benches). */
export const silentLogger: Logger = pino({ level: 'silent' });
