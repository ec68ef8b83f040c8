// Where a captured connection was going (proxy/original-dst.ts), with fakes of NAT, the programs' map and the search
// for an eBPF-mode agent's map: each mode's own source first, the other's for a hand-over between modes, NAT's answer
// that is the listener itself never taken, the search for the other agent's map bounded to once a second.
import { describe, expect, it } from 'vitest';
import { originalDstReader, type Destination } from '../../agent/proxy/original-dst.js';

const svc: Destination = { address: '10.96.0.11', port: 70 };
const pod: Destination = { address: '10.244.2.3', port: 7000 };
const listener: Destination = { address: '127.0.0.1', port: 15001 };

function natOf(answers: Record<number, Destination | 'none'>) {
  return (fd: number): Destination => {
    const a = answers[fd];
    if (!a || a === 'none') throw Object.assign(new Error('getsockopt(SO_ORIGINAL_DST): No such file or directory'), { code: 'ENOENT' });
    return a;
  };
}

describe('original destination', () => {
  it('eBPF mode: the record first, NAT for a connection the previous agent\'s rules redirected, never the listener itself', () => {
    const records = new Map<string, Destination>([['7:1', svc]]);
    const read = originalDstReader({
      mapFd: 7,
      nat: natOf({ 2: pod, 3: listener, 4: 'none' }),
      record: (map, fd) => {
        const d = records.get(`${map}:${fd}`);
        records.delete(`${map}:${fd}`);
        return d;
      },
    });
    expect(read(1)).toEqual(svc);
    expect(read(2)).toEqual(pod);
    expect(() => read(3)).toThrow(/no original destination recorded/);
    expect(() => read(4)).toThrow(expect.objectContaining({ code: 'ENOENT' }));
    // Read once: the record is gone.
    expect(() => read(1)).toThrow(/no original destination recorded/);
  });

  it('nft mode: NAT first, then the map of an eBPF-mode agent of this netns, looked for at most once a second', () => {
    let now = 0;
    let finds = 0;
    let agentMap: number | undefined;
    const records = new Map<string, Destination>();
    const read = originalDstReader({
      cgroupRoot: '/sys/fs/cgroup',
      nat: natOf({ 1: svc, 2: 'none', 3: listener, 4: 'none', 5: 'none' }),
      record: (map, fd) => records.get(`${map}:${fd}`),
      findMap: (root) => {
        expect(root).toBe('/sys/fs/cgroup');
        finds++;
        return agentMap;
      },
      now: () => now,
    });
    expect(read(1)).toEqual(svc);
    expect(finds).toBe(0);
    // No NAT and no eBPF agent: NAT's own error.
    expect(() => read(2)).toThrow(/SO_ORIGINAL_DST/);
    expect(finds).toBe(1);
    // An eBPF agent starts (a hand-over to the eBPF mode): found on the next look, a second later.
    agentMap = 9;
    records.set('9:3', pod).set('9:4', svc);
    expect(() => read(3)).toThrow(/no original destination/);
    expect(finds).toBe(1);
    now = 1500;
    expect(read(3)).toEqual(pod);
    expect(finds).toBe(2);
    // Kept: no search while it answers.
    now = 1600;
    expect(read(4)).toEqual(svc);
    expect(finds).toBe(2);
    expect(() => read(5)).toThrow(/SO_ORIGINAL_DST/);
  });

  it('nft mode without a cgroup root never looks for a map', () => {
    const read = originalDstReader({ nat: natOf({ 1: 'none' }), findMap: () => { throw new Error('looked'); } });
    expect(() => read(1)).toThrow(/SO_ORIGINAL_DST/);
  });
});
