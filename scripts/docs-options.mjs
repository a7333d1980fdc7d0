#!/usr/bin/env node
// Writes the options tables generated from src/options.ts between the
// `options:begin` / `options:end` markers in README.md (`npm run docs:options`).
// test/unit/options.test.ts fails while README and src/options.ts disagree.
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { withOptionsMarkdown } from '../dist/src/options.js';

const readme = join(dirname(fileURLToPath(import.meta.url)), '..', 'README.md');
const before = readFileSync(readme, 'utf8');
const after = withOptionsMarkdown(before);
if (after !== before) writeFileSync(readme, after);
process.stdout.write(`README.md options tables ${after === before ? 'already current' : 'updated'}\n`);
