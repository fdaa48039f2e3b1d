/** JSON log lines on stdout/stderr, which Lambda sends to CloudWatch Logs. */

export type LogFields = Record<string, unknown>;

export interface LambdaLogger {
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
}

export const consoleLogger: LambdaLogger = {
  info: (msg, fields) => console.log(JSON.stringify({ level: 'info', msg, ...fields })),
  warn: (msg, fields) => console.warn(JSON.stringify({ level: 'warn', msg, ...fields })),
  error: (msg, fields) => console.error(JSON.stringify({ level: 'error', msg, ...fields })),
};

export const silentLambdaLogger: LambdaLogger = { info: () => {}, warn: () => {}, error: () => {} };

const ORDER = ['info', 'warn', 'error', 'silent'] as const;

/** LOG_LEVEL (info, warn, error, silent; default info) -> a logger that drops lines below it. */
export function loggerForLevel(level: string | undefined): LambdaLogger {
  const min = Math.max(0, ORDER.indexOf((level ?? 'info').toLowerCase() as (typeof ORDER)[number]));
  const on = (l: (typeof ORDER)[number]) => ORDER.indexOf(l) >= min;
  return {
    info: on('info') ? consoleLogger.info : () => {},
    warn: on('warn') ? consoleLogger.warn : () => {},
    error: on('error') ? consoleLogger.error : () => {},
  };
}
