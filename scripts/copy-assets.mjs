// Copies the non-TypeScript files the agent loads at run time (the identity .proto) next to the compiled code.
import { cpSync } from 'node:fs';

for (const file of ['agent/identity/identity.proto']) cpSync(file, `dist/${file}`);
