// Aligned text tables for every table Trellis prints for a person (`-o table`, the demo, `lab status`, the bench
// report): two spaces between columns, text padded on the right, numbers on the left, no trailing blanks.

/**
 * `rows[0]` is the header. The first `textColumns` columns are text (left-aligned), the rest numbers
 * (right-aligned); by default every column is text.
 */
export function formatTable(rows: readonly (readonly string[])[], textColumns = Infinity): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows
    .map((r) => r.map((c, i) => (i < textColumns ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd())
    .join('\n');
}
