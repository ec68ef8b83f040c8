// Workload tools: the deterministic bytes tcp-send streams, so both ends (and a rerun) agree on the digest.
import { createCipheriv, createHash, type Cipheriv } from 'node:crypto';

/**
 * An endless pseudo-random stream fixed by `seed`: the AES-128-CTR keystream under a key derived from
 * the seed. Fast enough to saturate a link, and produced one chunk at a time.
 */
export class SeededBytes {
  private readonly cipher: Cipheriv;
  private readonly zeros: Buffer;

  constructor(seed: string, chunkSize: number) {
    const key = createHash('sha256').update(`trellis-payload:${seed}`).digest().subarray(0, 16);
    this.cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
    this.zeros = Buffer.alloc(chunkSize);
  }

  /** The next `n` bytes (n <= chunkSize), in a fresh buffer the caller may hand to a socket. */
  next(n: number): Buffer {
    return this.cipher.update(n === this.zeros.length ? this.zeros : this.zeros.subarray(0, n));
  }
}
