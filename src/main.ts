/**
 * Composition root: read the configuration (one clear line and exit 2 when it is wrong), build the relay,
 * and wire SIGTERM/SIGINT to a graceful stop.
 */
import { ConfigError, loadConfig } from './config';
import { createLogger } from './observability/logger';
import { startRelay } from './relay';

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`ses-email-service: configuration error: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const logger = createLogger(config.observability.logLevel);
  process.on('uncaughtException', (err) => {
    logger.fatal({ event: 'relay:crash', err }, 'uncaught exception; acknowledged mail is safe in the spool');
    process.exit(1);
  });
  process.on('unhandledRejection', (err) => {
    logger.fatal(
      { event: 'relay:crash', err },
      'unhandled rejection; acknowledged mail is safe in the spool',
    );
    process.exit(1);
  });

  let relay;
  try {
    relay = await startRelay(config, { logger });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { address?: string; port?: number };
    const what =
      e.code === 'EADDRINUSE' || e.code === 'EACCES'
        ? `cannot listen on ${e.address}:${e.port} (${e.code})`
        : String(err);
    logger.fatal({ event: 'relay:start-failed', err }, what);
    process.stderr.write(`ses-email-service: start failed: ${what}\n`);
    process.exit(1);
  }

  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      logger.warn(
        { event: 'relay:forced-exit', signal },
        'second signal: exiting now; queued mail stays in the spool',
      );
      process.exit(1);
    }
    logger.info({ event: 'relay:signal', signal }, `received ${signal}`);
    relay.stop().then(
      () => process.exit(0),
      (err) => {
        logger.error({ event: 'relay:stop-failed', err }, 'stop failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

void main();
