// Route compilation: RegularExpression matches, compiled once. The Gateway API leaves the dialect to the
// implementation; Trellis reads RE2 syntax with JavaScript's engine, so RE2-only features are translated and
// features RE2 lacks (lookaround, backreferences) are refused rather than silently behaving differently.

/** An anchored RegExp for an RE2-style pattern, or the reason it is refused. */
export function compileRe2(pattern: string): RegExp | string {
  let src = pattern;
  let flags = '';
  // RE2's whole-pattern flag group; JavaScript takes it as a flag.
  if (src.startsWith('(?i)')) {
    flags = 'i';
    src = src.slice(4);
  }
  for (let i = 0; i < src.length; i++) {
    const c = src[i];
    if (c === '\\') {
      const next = src[i + 1] ?? '';
      if (/[1-9]/.test(next) || next === 'k') return 'backreferences are not supported (RE2 syntax)';
      i++;
      continue;
    }
    if (c === '(' && src[i + 1] === '?') {
      const rest = src.slice(i + 2, i + 4);
      if (rest.startsWith('=') || rest.startsWith('!') || rest === '<=' || rest === '<!') {
        return 'lookahead and lookbehind are not supported (RE2 syntax)';
      }
      if (rest.startsWith('P<')) src = `${src.slice(0, i + 2)}${src.slice(i + 3)}`; // (?P<name> -> (?<name>
    }
  }
  try {
    return new RegExp(`^(?:${src})$`, flags);
  } catch (err) {
    return `invalid regular expression: ${(err as Error).message}`;
  }
}
