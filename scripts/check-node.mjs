// Fails early, with the fix, when npm scripts are not running on the pinned Node 24.
const major = Number(process.versions.node.split('.')[0]);
if (major !== 24) {
  console.error(
    `trellis needs Node 24 LTS, but this is Node ${process.versions.node}.\n` +
      'Run the project through npm scripts after `npm ci` (the node devDependency puts Node 24 first on PATH).',
  );
  process.exit(1);
}
