// Pieces of access lines built by hand (AccessLog.line): the same JSON a pino logger writes for the same fields,
// member by member, without an object per line and JSON.stringify walking it.

/** A JSON string. */
export const q = JSON.stringify as (s: string) => string;

/** The members of a peer object, undefined fields left out as JSON.stringify does. */
export function peer(ip: string | undefined, port: number | undefined, workload: string | undefined, principal: string | undefined): string {
  let s = '';
  if (ip !== undefined) s = `"ip":${q(ip)}`;
  if (port !== undefined) s += `${s ? ',' : ''}"port":${port}`;
  if (workload !== undefined) s += `${s ? ',' : ''}"workload":${q(workload)}`;
  if (principal !== undefined) s += `${s ? ',' : ''}"principal":${q(principal)}`;
  return s;
}

/** `,"k":value` for each defined member of `fields`, in their order. */
export function members(fields: Record<string, unknown> | undefined): string {
  let s = '';
  if (fields) {
    for (const k in fields) {
      const v = fields[k];
      if (v !== undefined) s += `,${q(k)}:${JSON.stringify(v)}`;
    }
  }
  return s;
}
