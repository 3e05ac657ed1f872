/**
 * The little the client reads from a JWT without verifying it: the `sub` a
 * gateway that verifies tokens binds the subscriber id to (`sub` or
 * `sub#device`, docs/protocol.md). The gateway verifies; this only picks a
 * default id that it will accept. (The SSE transport, which checks ownership
 * of an id after a refusal, receives `tokenSubject` from the client.)
 */

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

