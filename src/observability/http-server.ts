/**
 * The operator's HTTP port: `/metrics` (Prometheus text), `/healthz` (the process is alive) and `/readyz`
 * (the relay can take mail: SMTP listening and spool writable). Degraded dependencies that do not stop
 * ingress (SES unreachable, shared limiter or suppression list down: mail waits in the spool) are reported
 * in the /readyz body and in metrics, but do not fail the probe — failing it would stop clients from handing
 * over mail that the spool can still keep safe.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import type { Logger } from './logger';

export interface ReadinessReport {
  /** True when the relay accepts mail. */
  ready: boolean;
  checks: Record<string, 'ok' | 'degraded' | 'failing'>;
}

export interface HttpServerOptions {
  host: string;
  port: number;
  registry: Registry;
  readiness: () => Promise<ReadinessReport>;
  logger: Logger;
}

export interface HttpServer {
  address(): AddressInfo;
  close(): Promise<void>;
}

export async function startHttpServer(options: HttpServerOptions): Promise<HttpServer> {
  const { registry, readiness, logger } = options;
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    const reply = (status: number, body: string, type = 'application/json') => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405, '{"error":"method not allowed"}');
    if (url === '/healthz') return reply(200, '{"status":"ok"}');
    if (url === '/readyz') {
      readiness().then(
        (r) => reply(r.ready ? 200 : 503, JSON.stringify({ status: r.ready ? 'ready' : 'not ready', ...r })),
        (err) => reply(503, JSON.stringify({ status: 'not ready', error: String(err) })),
      );
      return;
    }
    if (url === '/metrics') {
      registry.metrics().then(
        (text) => reply(200, text, registry.contentType),
        (err) => {
          logger.error({ event: 'metrics:error', err }, 'metrics collection failed');
          reply(500, String(err), 'text/plain');
        },
      );
      return;
    }
    reply(404, '{"error":"not found","paths":["/metrics","/healthz","/readyz"]}');
  });
  server.keepAliveTimeout = 5_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    address: () => server.address() as AddressInfo,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
