// Copies the non-TypeScript files loaded at run time next to the compiled code: the identity and tap .protos, and the
// dashboard's page when the checkout has the viewer (the image's build has agent/ only).
import { cpSync, existsSync } from 'node:fs';

for (const file of ['agent/identity/identity.proto', 'agent/tap/tap.proto']) cpSync(file, `dist/${file}`);
if (existsSync('viz/dashboard/page')) cpSync('viz/dashboard/page', 'dist/viz/dashboard/page', { recursive: true });
