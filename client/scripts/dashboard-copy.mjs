// Copies the built library (dist/*.js) into the dashboard's embedded files
// (internal/dashboard/static/wspresence/), or with --check fails when that copy is not
// the current build. Run after `npm run build`.
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, '..', 'dist');
const target = path.join(here, '..', '..', 'internal', 'dashboard', 'static', 'wspresence');
const js = (dir) => (existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.js')).sort() : []);

const built = js(dist);
if (built.length === 0) {
  console.error(`no built files in ${dist}: run npm run build first`);
  process.exit(1);
}
if (process.argv.includes('--check')) {
  const copied = js(target);
  const stale = built.filter((f) => !copied.includes(f) || !readFileSync(path.join(dist, f)).equals(readFileSync(path.join(target, f))));
  const extra = copied.filter((f) => !built.includes(f));
  if (stale.length || extra.length) {
    console.error(`the dashboard's copy of the client library is not the current build (${[...stale, ...extra].join(', ')}): run npm run build && npm run dashboard in client/`);
    process.exit(1);
  }
  console.log(`the dashboard's copy of the client library is current (${built.length} files)`);
} else {
  rmSync(target, { recursive: true, force: true });
  mkdirSync(target, { recursive: true });
  for (const f of built) writeFileSync(path.join(target, f), readFileSync(path.join(dist, f)));
  console.log(`copied ${built.length} files to ${path.relative(process.cwd(), target)}`);
}
