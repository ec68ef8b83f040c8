// `trellis lab up --agent-args "FLAGS"`: the agents' extra flags, split as the bench splits them, refused when they
// cannot be agent flags; through the real command line, before anything is built (no root needed).
import { describe, expect, it } from 'vitest';
import { splitAgentArgs } from '../../../lab/cli/lab.js';
import { trellis } from '../../support/trellis-cli.js';

describe('lab up --agent-args', () => {
  it('splits at spaces; {node} is left for the lab to fill in per node', () => {
    expect(splitAgentArgs('  --workers 2   --tap-socket /run/t-{node}.sock ')).toEqual(['--workers', '2', '--tap-socket', '/run/t-{node}.sock']);
    expect(splitAgentArgs('')).toEqual([]);
  });

  it('refuses what cannot be agent flags, and agent flags without agents', () => {
    expect(() => splitAgentArgs('workers 2')).toThrow(/give agent flags/);
    expect(() => splitAgentArgs('--workers 2', false)).toThrow(/--agent-args goes with agents/);
  });

  it('takes a value that starts with a dash on the command line', async () => {
    // The manifest is read first: its absence is the error, so the flags were accepted as given.
    const ok = await trellis(['lab', 'up', '-f', '/nonexistent/tap.yaml', '--name', 'zz', '--agent-args', '--workers 2 --log-level debug']);
    expect(ok.stderr).toMatch(/nonexistent\/tap\.yaml/);
    const bad = await trellis(['lab', 'up', '-f', '/nonexistent/tap.yaml', '--name', 'zz', '--agent-args', 'workers 2']);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/--agent-args "workers 2": give agent flags/);
  });
});
