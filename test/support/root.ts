// Tests that build network namespaces need root. In CI they must fail loudly, never skip silently.
export const isRoot = process.getuid?.() === 0;

/** Call in beforeAll of a root-only suite. Throws (fails the suite) when not root. */
export function requireRoot(what: string): void {
  if (!isRoot) {
    throw new Error(
      `${what} needs root (network namespaces, iptables/nft). Run \`sudo npm test\`; CI runs .ci/run as root.`,
    );
  }
}
