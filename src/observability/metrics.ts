/**
 * The Prometheus registry. Each stage declares its own metrics beside the code that updates them
 * (ingress/ingress-metrics.ts, egress/egress-metrics.ts, ...), all on this registry with one prefix.
 */
import { Registry, collectDefaultMetrics } from 'prom-client';

export const METRIC_PREFIX = 'ses_relay_';

export const registry = new Registry();
collectDefaultMetrics({ register: registry, prefix: METRIC_PREFIX });
