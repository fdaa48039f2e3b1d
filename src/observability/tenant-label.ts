/**
 * The `tenant` label of the per-tenant metrics, bounded: a tenant's configured name (an API key's `name`,
 * an SMTP user name, `trusted-networks`, `autoresponder`), never a secret. The first TENANT_LABEL_LIMIT
 * distinct names keep their own label for the life of the process; any later one is counted as `other`,
 * so a table with thousands of keys cannot grow the metrics without bound (cardinality <= 101 per metric
 * and label combination). Names are configured by the operator, not chosen by clients.
 */
import { UNAUTHENTICATED_TENANT, type Tenant } from '../types';

export const TENANT_LABEL_LIMIT = 100;
export const OTHER_TENANT_LABEL = 'other';

const labelled = new Set<string>();

/** The metric label for a tenant (or a tenant name); absent: the trusted-networks tenant. */
export function tenantLabel(tenant: Tenant | string | undefined): string {
  const name = (typeof tenant === 'string' ? tenant : tenant?.name) || UNAUTHENTICATED_TENANT;
  if (labelled.has(name)) return name;
  if (labelled.size >= TENANT_LABEL_LIMIT) return OTHER_TENANT_LABEL;
  labelled.add(name);
  return name;
}
