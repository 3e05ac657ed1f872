/**
 * A MessagePack decoder for exactly the types compact event frames use:
 * arrays, integers (positive/negative fixint, uint8–64, int8–64), strings,
 * binary, nil and booleans. Anything else (maps, floats, extensions) is an
 * error: the gateway never sends it, and a small decoder keeps the bundle
 * small. (Errors are plain `Error`s: this lazily loaded chunk imports nothing
 * from the core bundle; the WebSocket transport reports them as `ProtocolError`.)
 */

/** A decoded value. */
export type MsgValue = null | boolean | number | string | Uint8Array | MsgValue[];

const utf8 = new TextDecoder();

/** Decodes one value that must span all of `bytes`. */
export function decodeMsgpack(bytes: Uint8Array): MsgValue {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  const need = (n: number): number => {
    if (pos + n > bytes.length) throw new Error('msgpack: truncated');
    const at = pos;
    pos += n;
    return at;
  };
  const big = (v: bigint): number => {
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw new Error('msgpack: integer beyond 2^53');
    }
    return Number(v);
  };
  const str = (n: number): string => utf8.decode(bytes.subarray(need(n), pos));
  const bin = (n: number): Uint8Array => bytes.slice(need(n), pos);
  const arr = (n: number): MsgValue[] => {
    const out: MsgValue[] = [];
    for (let i = 0; i < n; i++) out.push(read());
    return out;
  };
  const read = (): MsgValue => {
    const m = bytes[need(1)]!;
    if (m < 0x80) return m;
    if (m >= 0xe0) return m - 0x100;
    if ((m & 0xf0) === 0x90) return arr(m & 0x0f);
    if ((m & 0xe0) === 0xa0) return str(m & 0x1f);
    switch (m) {
      case 0xc0: return null;
      case 0xc2: return false;
      case 0xc3: return true;
      case 0xc4: return bin(view.getUint8(need(1)));
      case 0xc5: return bin(view.getUint16(need(2)));
      case 0xc6: return bin(view.getUint32(need(4)));
      case 0xcc: return view.getUint8(need(1));
      case 0xcd: return view.getUint16(need(2));
      case 0xce: return view.getUint32(need(4));
      case 0xcf: return big(view.getBigUint64(need(8)));
      case 0xd0: return view.getInt8(need(1));
      case 0xd1: return view.getInt16(need(2));
      case 0xd2: return view.getInt32(need(4));
      case 0xd3: return big(view.getBigInt64(need(8)));
      case 0xd9: return str(view.getUint8(need(1)));
      case 0xda: return str(view.getUint16(need(2)));
      case 0xdb: return str(view.getUint32(need(4)));
      case 0xdc: return arr(view.getUint16(need(2)));
      case 0xdd: return arr(view.getUint32(need(4)));
      default: throw new Error(`msgpack: unsupported type 0x${m.toString(16)}`);
    }
  };
  const value = read();
  if (pos !== bytes.length) throw new Error('msgpack: trailing bytes');
  return value;
}
