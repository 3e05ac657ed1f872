/**
 * The little the client reads from a JWT without verifying it: the `sub` a
 * gateway that verifies tokens binds the subscriber id to (`sub` or
 * `sub#device`, docs/protocol.md). The gateway verifies; this only picks a
 * default id that it will accept.
 */

/** The separator between a user (`sub`) and one of its devices in a subscriber id. */
export const DEVICE_SEPARATOR = '#';

/** The `sub` claim of a JWT, when the token is a readable JWT with a string `sub`. */
export function tokenSubject(token: string | undefined): string | undefined {
  const part = token?.split('.')[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
    const json = new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0)));
    const sub = (JSON.parse(json) as { sub?: unknown }).sub;
    return typeof sub === 'string' && sub !== '' ? sub : undefined;
  } catch {
    return undefined;
  }
}

/** Whether user `sub` owns subscriber id `id` (`sub`, or `sub#device` with a non-empty device). */
export function ownsSubscriber(sub: string, id: string): boolean {
  const i = id.indexOf(DEVICE_SEPARATOR);
  return i < 0 ? id === sub : id.slice(0, i) === sub && i < id.length - 1;
}
