// Root-only: the real trellis-cni binary against the agent's CNI socket in this process, with real pod netns,
// real capture rules and real listeners. Also: pods already running when the agent starts, found through /proc.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CniServer, parseRequest } from '../../agent/capture/cni-server.js';
import { NetnsFinder, localIPv4 } from '../../agent/capture/netns.js';
import { OptinFile, optinFromObjects, renderOptin } from '../../agent/capture/optin-file.js';
import { listenInNetns } from '../../agent/native/index.js';
import type { KubeObject } from '../../agent/model/objects.js';
import { requireRoot } from '../support/root.js';
import {
  AGENT_LISTENERS,
  CaptureAgent,
  NODE,
  PodNet,
  listening,
  namespace,
  nftTables,
  pod,
  run,
  runAsync,
  type TestPod,
} from './harness.js';

const root = resolve(import.meta.dirname, '../..');
const PLUGIN = join(root, 'native', 'build', 'trellis-cni');
const NODE_BIN = join(root, 'node_modules', '.bin', 'node');
const prefix = `trl-t-cni-${randomBytes(3).toString('hex')}`;
const dir = `/tmp/${prefix}`;
const socketPath = join(dir, 'cni.sock');
const optinPath = join(dir, 'cni', 'optin');
const WAIT_FOR_POD_MS = 1500;
const RULES_DELAY_MS = 300;

function config(opts: { socket?: string; optin?: string; ip?: string; timeoutMs?: number; version?: string } = {}): string {
  return JSON.stringify({
    cniVersion: opts.version ?? '1.0.0',
    name: 'k8s-pod-network',
    type: 'trellis-cni',
    socket: opts.socket ?? socketPath,
    optin_file: opts.optin ?? optinPath,
    timeout_ms: opts.timeoutMs ?? 10_000,
    prevResult: prevResult(opts.ip ?? '10.0.0.1'),
  });
}

function prevResult(ip: string): object {
  return {
    cniVersion: '1.0.0',
    interfaces: [{ name: 'eth0', mac: '0a:58:0a:f4:01:05', sandbox: '/var/run/netns/x' }],
    ips: [{ address: `${ip}/24`, gateway: ip.replace(/\.\d+$/, '.254'), interface: 0 }],
    routes: [{ dst: '0.0.0.0/0' }],
    dns: {},
  };
}

function cniEnv(command: string, p: { ns: string; name: string; netns?: string; containerId?: string }): NodeJS.ProcessEnv {
  return {
    PATH: process.env.PATH,
    CNI_COMMAND: command,
    CNI_CONTAINERID: p.containerId ?? `ctr-${p.name}`,
    CNI_NETNS: p.netns ?? '',
    CNI_IFNAME: 'eth0',
    CNI_PATH: '/opt/cni/bin',
    CNI_ARGS: `IgnoreUnknown=1;K8S_POD_NAMESPACE=${p.ns};K8S_POD_NAME=${p.name};K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=uid-${p.ns}-${p.name}`,
  };
}

function plugin(command: string, p: { ns: string; name: string; netns?: string; containerId?: string }, stdin: string) {
  return runAsync(PLUGIN, [], { env: cniEnv(command, p), input: stdin });
}

function cniError(stdout: string): { cniVersion: string; code: number; msg: string; details: string } {
  return JSON.parse(stdout) as { cniVersion: string; code: number; msg: string; details: string };
}

describe('trellis-cni and the agent CNI socket', () => {
  const podNet = new PodNet(prefix, `10.253.${randomInt(1, 250)}`);
  let agent: CaptureAgent;
  let cni: CniServer | undefined;
  let echo: net.Server;
  let client: TestPod;
  let plain: TestPod;
  const base: KubeObject[] = [namespace('mesh', true), namespace('plain', false)];

  beforeAll(async () => {
    requireRoot('CNI plugin tests');
    run('npm', 'run', 'build:native', '--silent');
    expect(statSync(PLUGIN).mode & 0o111).toBeTruthy();
    // A static binary: the file(1) check is informative only; ldd says "not a dynamic executable".
    const ldd = await runAsync('ldd', [PLUGIN]);
    expect(`${ldd.stdout}${ldd.stderr}`).toMatch(/not a dynamic executable|statically linked/);
    mkdirSync(dir, { recursive: true });
    podNet.create();
    client = podNet.addPod('client', 5);
    plain = podNet.addPod('plain', 6);
    // The echo server the pods connect to, in the hub (outside every pod).
    echo = net.createServer((s) => {
      s.on('error', () => undefined);
      s.pipe(s);
    });
    await listenInNetns(echo, `/run/netns/${podNet.hub}`, { host: podNet.hubIp, port: 8080 });

    agent = new CaptureAgent({ rulesDelayMs: RULES_DELAY_MS });
    await agent.apply(base);
    cni = await CniServer.start({
      socketPath,
      state: () => agent.store.current(),
      subscribe: (fn) => agent.store.subscribe(fn),
      enrol: (w, sandbox) => agent.enrolment.enrolNow(w, sandbox),
      unenrol: (key, sandbox) => agent.enrolment.unenrolNow(key, sandbox),
      enrolled: () => agent.enrolment.pods(),
      waitForPodMs: WAIT_FOR_POD_MS,
      logger: agent.log.logger,
      metrics: agent.metrics,
    });
  });

  afterAll(async () => {
    await cni?.close();
    agent?.close();
    echo?.close();
    podNet.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  it('ADD of a meshed pod returns only when capture is in place, and the very first connection is captured', async () => {
    const cfg = join(dir, 'add.json');
    writeFileSync(cfg, config({ ip: client.ip }));
    // One shell runs the plugin and, the instant it returns, looks at the pod's netns and makes the pod's first
    // connection: the agent (in this process) gets no head start after the reply.
    const script =
      '"$0" <"$1" >"$2"; echo "$?" >"$3"; ip netns exec "$4" nft list tables >"$5"; ip netns exec "$4" ss -ltnH >>"$5"; ' +
      'exec ip netns exec "$4" "$6" -e "$7"';
    const first = `const s=require('net').connect(8080,'${podNet.hubIp}',()=>s.end('first'));let b='';s.on('data',d=>b+=d);s.on('close',()=>console.log(b))`;
    const out = (name: string) => join(dir, name);
    const started = performance.now();
    const shell = runAsync('sh', ['-c', script, PLUGIN, cfg, out('add.out'), out('add.rc'), client.ns, out('add.seen'), NODE_BIN, first], {
      env: cniEnv('ADD', { ns: 'mesh', name: 'client', netns: client.path }),
    });
    // The kubelet runs CNI ADD before the agent's informer has the pod: it must wait for it.
    await new Promise((r) => setTimeout(r, 300));
    expect(agent.enrolment.pods()).toEqual([]);
    await agent.apply([...base, pod('mesh', 'client')]);
    const res = await shell;

    expect(readFileSync(out('add.rc'), 'utf8').trim(), res.stderr).toBe('0');
    expect(performance.now() - started).toBeGreaterThanOrEqual(300 + RULES_DELAY_MS);
    // The result is the previous plugin's, unchanged.
    expect(JSON.parse(readFileSync(out('add.out'), 'utf8'))).toEqual(prevResult(client.ip));
    // Capture was in place the moment the plugin returned...
    const seen = readFileSync(out('add.seen'), 'utf8');
    expect(seen).toContain('table inet trellis');
    for (const l of AGENT_LISTENERS) expect(seen).toContain(l);
    // ...so the first connection the pod made went through the agent.
    expect(res.stdout.trim()).toBe('first');
    await waitFor(() => agent.accessLines().length > 0);
    const [line] = agent.accessLines();
    expect(line).toMatchObject({
      direction: 'outbound',
      src: { workload: 'mesh/client' },
      dst: { ip: podNet.hubIp, port: 8080 },
      bytes_received: 5,
      bytes_sent: 5,
    });
    const text = await agent.metrics.registry.getSingleMetricAsString('trellis_tcp_connections_opened_total');
    expect(text).toMatch(/reporter="source",source_workload="client",source_workload_namespace="mesh".*\} 1/);
    expect(agent.enrolment.pods()).toEqual(['mesh/client']);
  });

  it('a retried ADD of the enrolled sandbox answers at once and changes nothing', async () => {
    const before = listening(client.ns);
    const res = await plugin('ADD', { ns: 'mesh', name: 'client', netns: client.path }, config({ ip: client.ip }));
    expect(res.code, res.stdout).toBe(0);
    expect(res.ms).toBeLessThan(1000);
    expect(listening(client.ns)).toEqual(before);
  });

  it('CHECK passes for an enrolled pod', async () => {
    const res = await plugin('CHECK', { ns: 'mesh', name: 'client', netns: client.path }, config({ ip: client.ip }));
    expect(res.code, res.stdout).toBe(0);
    expect(res.stdout).toBe('');
  });

  it('ADD of a pod that is not meshed returns at once and installs nothing', async () => {
    await agent.apply([...base, pod('mesh', 'client'), pod('plain', 'plain')]);
    const res = await plugin('ADD', { ns: 'plain', name: 'plain', netns: plain.path }, config({ ip: plain.ip }));
    expect(res.code, res.stdout + res.stderr).toBe(0);
    expect(res.ms).toBeLessThan(1000);
    expect(JSON.parse(res.stdout)).toEqual(prevResult(plain.ip));
    expect(nftTables(plain.ns)).toBe('');
    expect(listening(plain.ns)).toEqual([]);
    expect(agent.enrolment.pods()).toEqual(['mesh/client']);
    // Its connections go straight out: the agent sees none of them.
    const before = agent.accessLines().length;
    const script = `const s=require('net').connect(8080,'${podNet.hubIp}',()=>s.end('direct'));let b='';s.on('data',d=>b+=d);s.on('close',()=>console.log(b))`;
    const direct = await runAsync('ip', ['netns', 'exec', plain.ns, NODE_BIN, '-e', script]);
    expect(direct.stdout.trim()).toBe('direct');
    await new Promise((r) => setTimeout(r, 100));
    expect(agent.accessLines().length).toBe(before);
  });

  it('ADD of a pod the agent never sees fails with the reason, after a bounded wait', async () => {
    const res = await plugin('ADD', { ns: 'mesh', name: 'ghost', netns: plain.path }, config({ ip: '10.9.9.9' }));
    expect(res.code).toBe(1);
    const err = cniError(res.stdout);
    expect(err.code).toBe(100);
    expect(err.msg).toBe('trellis agent could not enrol pod mesh/ghost');
    expect(err.details).toMatch(/not in the agent's view of the cluster after 1500 ms/);
    expect(res.ms).toBeGreaterThanOrEqual(WAIT_FOR_POD_MS);
    expect(res.ms).toBeLessThan(WAIT_FOR_POD_MS + 2000);
  });

  it('DEL removes the capture rules and closes the listeners; a repeated DEL is fine', async () => {
    const res = await plugin('DEL', { ns: 'mesh', name: 'client', netns: client.path }, config({ ip: client.ip }));
    expect(res.code, res.stdout + res.stderr).toBe(0);
    expect(res.stdout).toBe('');
    expect(nftTables(client.ns)).toBe('');
    expect(listening(client.ns)).toEqual([]);
    expect(agent.enrolment.pods()).toEqual([]);
    // The state still lists the pod (the informer has not seen it go): it stays unenrolled.
    await agent.apply([...base, pod('mesh', 'client'), pod('plain', 'plain')]);
    expect(agent.enrolment.pods()).toEqual([]);

    const again = await plugin('DEL', { ns: 'mesh', name: 'client' }, config({ ip: client.ip }));
    expect(again.code, again.stdout).toBe(0);
    const check = await plugin('CHECK', { ns: 'mesh', name: 'client', netns: client.path }, config({ ip: client.ip }));
    expect(check.code).toBe(1);
    expect(cniError(check.stdout).details).toMatch(/meshed but not enrolled/);
  });

  it('a DEL for an older sandbox of a pod leaves the current one enrolled', async () => {
    const add = await plugin('ADD', { ns: 'mesh', name: 'client', netns: client.path, containerId: 'new' }, config({ ip: client.ip }));
    expect(add.code, add.stdout).toBe(0);
    const stale = await plugin('DEL', { ns: 'mesh', name: 'client', containerId: 'old' }, config({ ip: client.ip }));
    expect(stale.code).toBe(0);
    expect(agent.enrolment.pods()).toEqual(['mesh/client']);
    expect(listening(client.ns)).toEqual(AGENT_LISTENERS);
    const del = await plugin('DEL', { ns: 'mesh', name: 'client', netns: client.path, containerId: 'new' }, config({ ip: client.ip }));
    expect(del.code).toBe(0);
    expect(agent.enrolment.pods()).toEqual([]);
  });

  it('at a hand-over, tells the next agent of the pods it enrolled through CNI, so it holds them before the old listeners close', async () => {
    const handed = podNet.addPod('handed', 8);
    // The kubelet has not reported the pod's IP yet: no agent can find its netns but from the CNI ADD.
    const objects = [...base, pod('mesh', 'client'), pod('plain', 'plain'), pod('mesh', 'handed')];
    await agent.apply(objects);
    const sock = join(dir, 'handover-pods.sock');
    const serve = (a: CaptureAgent) =>
      CniServer.start({
        socketPath: sock,
        state: () => a.store.current(),
        subscribe: (fn) => a.store.subscribe(fn),
        enrol: (w, sandbox) => a.enrolment.enrolNow(w, sandbox),
        unenrol: (key, sandbox) => a.enrolment.unenrolNow(key, sandbox),
        enrolled: () => a.enrolment.pods(),
        waitForPodMs: WAIT_FOR_POD_MS,
        logger: a.log.logger,
        metrics: a.metrics,
      });
    const old = await serve(agent);
    const next = new CaptureAgent();
    let nextCni: CniServer | undefined;
    try {
      const add = await plugin('ADD', { ns: 'mesh', name: 'handed', netns: handed.path, containerId: 'sandbox-1' }, config({ socket: sock, ip: handed.ip }));
      expect(add.code, add.stdout).toBe(0);
      await next.apply(objects);
      expect(next.enrolment.pods()).toEqual([]);
      nextCni = await serve(next);
      await old.close();
      expect(await old.handOver(agent.enrolment.pods())).toEqual({ handed: 1, failed: 0 });
      expect(next.enrolment.pods()).toEqual(['mesh/handed']);
      // Its listeners beside the old agent's (SO_REUSEPORT), in the pod's netns as the ADD named it.
      expect(listening(handed.ns)).toEqual([...AGENT_LISTENERS, ...AGENT_LISTENERS].sort());
      expect(next.enrolment.enrolledPods()[0]).toMatchObject({ ip: handed.ip, netnsPath: handed.path });
      // The DEL that comes later reaches the next agent, which knows the sandbox.
      const del = await plugin('DEL', { ns: 'mesh', name: 'handed', netns: handed.path, containerId: 'sandbox-1' }, config({ socket: sock, ip: handed.ip }));
      expect(del.code, del.stdout).toBe(0);
      expect(next.enrolment.pods()).toEqual([]);
      // Without a successor (a plain stop, the socket gone with us), there is no one to tell.
      await nextCni.close();
      nextCni = undefined;
      expect(await old.handOver(['mesh/handed'])).toEqual({ handed: 0, failed: 0 });
    } finally {
      await nextCni?.close();
      next.close();
      await agent.enrolment.unenrolNow('mesh/handed', { containerId: 'sandbox-1' });
      await agent.apply([...base, pod('mesh', 'client'), pod('plain', 'plain')]);
      podNet.removePod(handed);
    }
  });

  describe('with the agent unreachable', () => {
    const objects: KubeObject[] = [
      namespace('mesh', true),
      namespace('plain', false),
      pod('mesh', 'opted-out', { mesh: 'disabled' }),
      pod('plain', 'opted-in', { mesh: 'enabled' }),
      pod('plain', 'elsewhere', { mesh: 'enabled', node: 'node-b' }),
    ];
    const down = join(dir, 'down.sock');
    const cases = [
      { ns: 'mesh', name: 'new-pod', meshed: true, why: 'lists namespace mesh as meshed' },
      { ns: 'mesh', name: 'opted-out', meshed: false, why: 'lists pod mesh/opted-out as disabled' },
      { ns: 'plain', name: 'opted-in', meshed: true, why: 'lists pod plain/opted-in as enabled' },
      { ns: 'plain', name: 'other', meshed: false, why: 'does not list pod plain/other' },
    ];

    beforeAll(() => {
      new OptinFile({ path: optinPath, logger: agent.log.logger }).write(optinFromObjects(objects, NODE));
    });

    it('the opt-in file lists meshed namespaces and this node\'s pod-level annotations', () => {
      expect(renderOptin(optinFromObjects(objects, NODE)).split('\n').slice(1)).toEqual([
        'namespace mesh',
        'pod mesh/opted-out disabled',
        'pod plain/opted-in enabled',
        '',
      ]);
    });

    for (const c of cases) {
      it(`ADD of ${c.ns}/${c.name} ${c.meshed ? 'fails clearly' : 'passes'} (${c.why})`, async () => {
        const res = await plugin('ADD', { ns: c.ns, name: c.name, netns: plain.path }, config({ socket: down, ip: plain.ip }));
        if (c.meshed) {
          expect(res.code).toBe(1);
          const err = cniError(res.stdout);
          expect(err).toMatchObject({ cniVersion: '1.0.0', code: 11 });
          expect(err.msg).toBe(
            `trellis agent unreachable at ${down}: pod ${c.ns}/${c.name} is meshed and cannot start without traffic capture`,
          );
          expect(err.details).toContain('connect: No such file or directory');
          expect(err.details).toContain(c.why);
        } else {
          expect(res.code, res.stdout).toBe(0);
          expect(JSON.parse(res.stdout)).toEqual(prevResult(plain.ip));
          expect(res.stderr).toContain('agent unreachable');
        }
      });
    }

    it('a stale socket file (agent died) counts as unreachable', async () => {
      const stale = join(dir, 'stale.sock');
      // A crashed agent leaves its socket file behind with nobody listening on it.
      run('python3', '-c', `import socket; s=socket.socket(socket.AF_UNIX); s.bind('${stale}')`);
      expect(existsSync(stale)).toBe(true);
      const res = await plugin('ADD', { ns: 'mesh', name: 'new-pod', netns: plain.path }, config({ socket: stale, ip: plain.ip }));
      expect(res.code).toBe(1);
      expect(cniError(res.stdout).details).toContain('connect: Connection refused');
    });

    it('without an opt-in file every pod passes', async () => {
      const res = await plugin('ADD', { ns: 'mesh', name: 'new-pod', netns: plain.path }, config({ socket: down, optin: join(dir, 'none'), ip: plain.ip }));
      expect(res.code, res.stdout).toBe(0);
      expect(res.stderr).toContain('no opt-in file');
    });

    it('DEL passes even so, and CHECK follows the opt-in file', async () => {
      const del = await plugin('DEL', { ns: 'mesh', name: 'new-pod' }, config({ socket: down }));
      expect(del.code).toBe(0);
      const check = await plugin('CHECK', { ns: 'mesh', name: 'new-pod', netns: plain.path }, config({ socket: down }));
      expect(check.code).toBe(1);
      expect(cniError(check.stdout).code).toBe(11);
    });

    it('an agent that accepts but never answers counts as unreachable after timeout_ms', async () => {
      const mute = join(dir, 'mute.sock');
      const held: net.Socket[] = [];
      const s = net.createServer((c) => held.push(c));
      await new Promise<void>((r) => s.listen(mute, r));
      try {
        const res = await plugin('ADD', { ns: 'mesh', name: 'new-pod', netns: plain.path }, config({ socket: mute, timeoutMs: 300, ip: plain.ip }));
        expect(res.code).toBe(1);
        expect(cniError(res.stdout).details).toContain('the agent did not answer within 300 ms');
        expect(res.ms).toBeLessThan(2000);
      } finally {
        for (const c of held) c.destroy();
        s.close();
      }
    });
  });

  describe('plugin input handling', () => {
    it('VERSION lists the supported versions', async () => {
      const res = await runAsync(PLUGIN, [], { env: { CNI_COMMAND: 'VERSION' }, input: '{"cniVersion":"1.0.0"}' });
      expect(res.code).toBe(0);
      expect(JSON.parse(res.stdout)).toEqual({ cniVersion: '1.1.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
    });

    const bad: [string, string | Buffer, number, RegExp][] = [
      ['empty stdin', '', 6, /no network configuration/],
      ['truncated JSON', config().slice(0, 40), 6, /not valid JSON/],
      ['an array', '[1,2]', 6, /not a JSON object/],
      ['binary garbage', randomBytes(4096), 6, /not valid JSON/],
      ['nesting 100000 deep', `{"a":${'['.repeat(100_000)}`, 6, /not valid JSON/],
      ['more than 1 MiB', `{"cniVersion":"1.0.0","x":"${'a'.repeat(1 << 20)}"}`, 6, /larger than/],
      ['a NUL escape in a string', '{"cniVersion":"1.0.0","socket":"/a\\u0000b","prevResult":{}}', 7, /"socket"/],
      ['an unsupported version', config({ version: '0.2.0' }), 1, /CNI version 0.2.0 is not supported/],
      ['no prevResult', JSON.stringify({ cniVersion: '1.0.0', name: 'n', type: 'trellis-cni' }), 7, /chained after/],
      ['a bad timeout_ms', JSON.stringify({ cniVersion: '1.0.0', timeout_ms: -5, prevResult: {} }), 7, /timeout_ms/],
      ['a socket path too long for sun_path', JSON.stringify({ cniVersion: '1.0.0', socket: `/${'s'.repeat(200)}`, prevResult: {} }), 7, /"socket"/],
    ];
    for (const [what, stdin, code, msg] of bad) {
      it(`${what} gives a CNI error, never a crash`, async () => {
        const res = await runAsync(PLUGIN, [], { env: cniEnv('ADD', { ns: 'mesh', name: 'x', netns: plain.path }), input: stdin });
        expect(res.code, res.stdout + res.stderr).toBe(1);
        const err = cniError(res.stdout);
        expect(err.code).toBe(code);
        expect(err.msg).toMatch(msg);
      });
    }

    it('missing CNI environment gives a CNI error', async () => {
      const noCommand = await runAsync(PLUGIN, [], { env: {}, input: config() });
      expect(noCommand.code).toBe(1);
      expect(cniError(noCommand.stdout)).toMatchObject({ code: 4, msg: expect.stringMatching(/CNI_COMMAND is not set/) });
      const env = cniEnv('ADD', { ns: 'mesh', name: 'x' });
      const noNetns = await runAsync(PLUGIN, [], { env, input: config() });
      expect(cniError(noNetns.stdout)).toMatchObject({ code: 4, msg: expect.stringMatching(/CNI_NETNS is not set/) });
      const unknown = await runAsync(PLUGIN, [], { env: { ...env, CNI_COMMAND: 'FROB' }, input: config() });
      expect(cniError(unknown.stdout)).toMatchObject({ code: 4, msg: 'unknown CNI_COMMAND "FROB"' });
    });

    it('a container that is not a Kubernetes pod passes through untouched', async () => {
      const env = { ...cniEnv('ADD', { ns: 'x', name: 'y', netns: plain.path }), CNI_ARGS: 'IgnoreUnknown=1' };
      const res = await runAsync(PLUGIN, [], { env, input: config({ ip: '10.1.1.1' }) });
      expect(res.code).toBe(0);
      expect(JSON.parse(res.stdout)).toEqual(prevResult('10.1.1.1'));
    });

    it('escaped and unusual JSON in the config is decoded, and prevResult is passed through byte for byte', async () => {
      const prev = '{ "cniVersion" : "1.0.0", "ips" : [ { "address" : "10.\\u0031.2.3/8" } ], "x": [1e5, -0.5, true, null, "\\ud83d\\ude00"] }';
      const stdin = `{"cniVersion":"1.0.0","socket":"${join(dir, 'down.sock').replace(/\//g, '\\/')}","optin_file":"${join(dir, 'none')}","prevResult":${prev}}`;
      const res = await runAsync(PLUGIN, [], { env: cniEnv('ADD', { ns: 'mesh', name: 'x', netns: plain.path }), input: stdin });
      expect(res.code, res.stdout).toBe(0);
      expect(res.stdout).toBe(`${prev}\n`);
      expect(res.stderr).toContain(`agent unreachable at ${join(dir, 'down.sock')}`);
    });
  });

  describe('the agent side', () => {
    it('rejects malformed requests with a reason', () => {
      expect(parseRequest('nope')).toEqual({ error: 'invalid request: not a JSON line' });
      expect(parseRequest('{"cmd":"RUN"}')).toEqual({ error: 'invalid request: "cmd" must be ADD, DEL or CHECK' });
      expect(parseRequest('{"cmd":"ADD","containerId":"c","netns":"/n","ips":["x"]}')).toMatchObject({ error: expect.stringMatching(/"ips"/) });
      expect(parseRequest('{"cmd":"DEL","containerId":"c","namespace":"a","name":"b","ips":[]}')).toMatchObject({ request: { cmd: 'DEL', netns: '' } });
    });

    it('answers a garbage line with an error and keeps serving', async () => {
      const reply = await new Promise<string>((res, rej) => {
        const c = net.connect(socketPath, () => c.write('garbage\n'));
        let b = '';
        c.on('data', (d) => (b += d.toString()));
        c.on('end', () => res(b));
        c.on('error', rej);
      });
      expect(JSON.parse(reply)).toEqual({ ok: false, error: 'invalid request: not a JSON line' });
      const res = await plugin('ADD', { ns: 'plain', name: 'plain', netns: plain.path }, config({ ip: plain.ip }));
      expect(res.code).toBe(0);
    });

    it('takes the socket over from an agent serving it (whose close then leaves it), replaces a stale one, never deletes a plain file', async () => {
      const inputs = {
        state: () => agent.store.current(),
        enrol: async () => undefined,
        unenrol: async () => undefined,
        enrolled: () => [],
        waitForPodMs: 10,
        logger: agent.log.logger,
        metrics: agent.metrics,
      };
      // A hand-over: the next agent binds beside the path and renames its socket over it; the old one keeps its
      // connections, and its close neither removes the new socket (libuv unlinks the path it bound) nor breaks it.
      const handed = join(dir, 'handover.sock');
      const old = await CniServer.start({ ...inputs, socketPath: handed });
      const inode = () => statSync(handed).ino;
      const before = inode();
      const next = await CniServer.start({ ...inputs, socketPath: handed });
      expect(inode()).not.toBe(before);
      const after = inode();
      await old.close();
      expect(inode()).toBe(after);
      expect(statSync(handed).mode & 0o777).toBe(0o600);
      const answer = await new Promise<string>((res, rej) => {
        const c = net.connect(handed, () => c.write('garbage\n'));
        let b = '';
        c.on('data', (d) => (b += d.toString()));
        c.on('end', () => res(b));
        c.on('error', rej);
      });
      expect(JSON.parse(answer)).toEqual({ ok: false, error: 'invalid request: not a JSON line' });
      await next.close();
      expect(existsSync(handed)).toBe(false);
      expect(readdirSync(dir).filter((f) => f.startsWith('handover.sock'))).toEqual([]);
      const stale = join(dir, 'stale2.sock');
      run('python3', '-c', `import socket; s=socket.socket(socket.AF_UNIX); s.bind('${stale}')`);
      const second = await CniServer.start({ ...inputs, socketPath: stale });
      expect(statSync(stale).mode & 0o777).toBe(0o600);
      await second.close();
      expect(existsSync(stale)).toBe(false);
      const file = join(dir, 'file.sock');
      writeFileSync(file, 'x');
      await expect(CniServer.start({ ...inputs, socketPath: file })).rejects.toMatchObject({ code: 'EEXIST' });
      expect(existsSync(file)).toBe(true);
    });

    it('passes a request in flight at a hand-over to the agent that took the socket over, and drops it with nobody there', async () => {
      const late = { key: 'mesh/late', namespace: 'mesh', name: 'late', uid: '', meshed: true };
      const enrolled: string[] = [];
      // The old agent has not seen the pod yet (its informer lags behind the kubelet); the next one has.
      const inputs = (who: 'old' | 'next', socketPath: string) =>
        ({
          socketPath,
          state: () => ({ workloads: new Map(who === 'next' ? [[late.key, late]] : []) }),
          enrol: async (w: { key: string }) => void enrolled.push(`${who} ${w.key}`),
          unenrol: async () => undefined,
          enrolled: () => [],
          waitForPodMs: 8000,
          logger: agent.log.logger,
          metrics: agent.metrics,
        }) as unknown as Parameters<typeof CniServer.start>[0];
      const add = (path: string) =>
        new Promise<string>((res, rej) => {
          const req = { cmd: 'ADD', containerId: 'c-late', netns: plain.path, ifname: 'eth0', namespace: 'mesh', name: 'late', uid: '', ips: [plain.ip], timeoutMs: 9000 };
          const c = net.connect(path, () => c.write(`${JSON.stringify(req)}\n`));
          let b = '';
          c.on('data', (d) => (b += d.toString()));
          c.on('close', () => res(b));
          c.on('error', rej);
        });
      const handed = join(dir, 'inflight.sock');
      const old = await CniServer.start(inputs('old', handed));
      const waiting = add(handed);
      await new Promise((r) => setTimeout(r, 300));
      const next = await CniServer.start(inputs('next', handed));
      await old.close();
      expect(JSON.parse(await waiting)).toEqual({ ok: true, action: 'enrolled' });
      expect(enrolled).toEqual(['next mesh/late']);
      // With no agent beside it, a stopping agent drops the request: the plugin then goes by the opt-in file.
      const alone = join(dir, 'alone.sock');
      const last = await CniServer.start(inputs('old', alone));
      const dropped = add(alone);
      await new Promise((r) => setTimeout(r, 300));
      await last.close();
      expect(await dropped).toBe('');
      await next.close();
    });

    it('counts requests by command and outcome', async () => {
      const text = await agent.metrics.registry.getSingleMetricAsString('trellis_cni_requests_total');
      expect(text).toMatch(/command="ADD",outcome="enrolled"\} [1-9]/);
      expect(text).toMatch(/command="ADD",outcome="not-meshed"\} [1-9]/);
      expect(text).toMatch(/command="DEL",outcome="removed"\} [1-9]/);
      expect(text).toMatch(/command="ADD",outcome="error"\} [1-9]/);
    });
  });
});

describe('pods already running when the agent starts', () => {
  const podNet = new PodNet(`${prefix}-r`, `10.254.${randomInt(1, 250)}`);
  let running: TestPod;
  let holder: ChildProcess | undefined;
  let agent: CaptureAgent | undefined;

  beforeAll(async () => {
    requireRoot('netns lookup tests');
    podNet.create();
    running = podNet.addPod('running', 7);
    // The pod's "pause" process: the netns is found through it, as a runtime's sandbox is.
    holder = spawn('ip', ['netns', 'exec', running.ns, 'sleep', '600'], { stdio: 'ignore' });
    await waitFor(() => pidsIn(running.path).length > 0);
  });

  afterAll(() => {
    agent?.close();
    holder?.kill('SIGKILL');
    podNet.destroy();
  });

  it('finds the netns that owns an IP: the bind mount if there is one, else /proc/PID/ns/net', async () => {
    expect(await new NetnsFinder().find(running.ip)).toBe(running.path);
    const viaProc = await new NetnsFinder({ netnsDirs: [] }).find(running.ip);
    expect(viaProc).toMatch(/^\/proc\/\d+\/ns\/net$/);
    expect(statSync(viaProc!).ino).toBe(statSync(running.path).ino);
    // Never the agent's own netns, and nothing for an address nobody owns.
    expect(await new NetnsFinder().find('127.0.0.1')).toBeUndefined();
    expect(await new NetnsFinder().find('10.255.255.254')).toBeUndefined();
  });

  it('reads local addresses from fib_trie', () => {
    const trie = ['Local:', '  +-- 0.0.0.0/0 3 0 5', '     |-- 10.1.2.3', '        /32 host LOCAL', '     |-- 10.1.2.255', '        /32 link BROADCAST'].join('\n');
    expect([...localIPv4(trie)]).toEqual(['10.1.2.3']);
  });

  it('a meshed pod with an IP and no netns annotation is enrolled into the netns found by its IP', async () => {
    const finder = new NetnsFinder({ netnsDirs: [] });
    agent = new CaptureAgent({ findNetns: (ip) => finder.find(ip) });
    await agent.apply([namespace('mesh', true), pod('mesh', 'running', { ip: running.ip })]);
    expect(agent.enrolment.pods()).toEqual(['mesh/running']);
    expect(agent.enrolment.enrolledPods()[0]!.netnsPath).toMatch(/^\/proc\/\d+\/ns\/net$/);
    expect(nftTables(running.ns)).toContain('table inet trellis');
    expect(listening(running.ns)).toEqual(AGENT_LISTENERS);
    // The annotation flips to disabled: unenrolled, rules gone.
    await agent.apply([namespace('mesh', true), pod('mesh', 'running', { ip: running.ip, mesh: 'disabled' })]);
    expect(agent.enrolment.pods()).toEqual([]);
    expect(nftTables(running.ns)).toBe('');
    expect(listening(running.ns)).toEqual([]);
  });
});

function pidsIn(netnsPath: string): number[] {
  const want = statSync(netnsPath).ino;
  return run('ls', '/proc')
    .split('\n')
    .filter((n) => /^\d+$/.test(n))
    .filter((pid) => {
      try {
        return statSync(`/proc/${pid}/ns/net`).ino === want;
      } catch {
        return false;
      }
    })
    .map(Number);
}

async function waitFor(cond: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
