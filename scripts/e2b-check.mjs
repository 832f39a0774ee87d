// TVM's E2B door, exercised by the official E2B JavaScript SDK (`npm install e2b`).
//
// Usage: node e2b-check.mjs BASE_URL TOKEN   (copied next to a node_modules with `e2b`)
// The SDK is pointed at BASE the documented way (E2B_API_URL, E2B_SANDBOX_URL,
// E2B_API_KEY); its transport is connect-web with the JSON codec.
const [base, token] = process.argv.slice(2);
process.env.E2B_API_URL = `${base}/e2b`;
process.env.E2B_SANDBOX_URL = `${base}/e2b/envd`;
process.env.E2B_API_KEY = token;
const { Sandbox, CommandExitError, SandboxError } = await import('e2b');

let checks = 0;
function check(cond, what) {
  if (!cond) {
    console.error(`FAIL: ${what}`);
    process.exit(1);
  }
  checks += 1;
  console.log(`  ok  ${what}`);
}
async function rejects(p, kind, needle, what) {
  try {
    await p;
  } catch (e) {
    check(e instanceof kind && String(e.message).includes(needle), `${what} rejects with ${kind.name} (${e.constructor.name}: ${e.message})`);
    return e;
  }
  check(false, `${what} should reject`);
}

const sbx = await Sandbox.create({ timeoutMs: 300_000, metadata: { suite: 'js' }, envs: { GREETING: 'hi' } });
check(sbx.sandboxId.startsWith('sb-'), `Sandbox.create() -> ${sbx.sandboxId}`);
const r = await sbx.commands.run('echo out; echo $GREETING; pwd; echo err >&2');
check(r.exitCode === 0 && r.stdout === 'out\nhi\n/home/user\n' && r.stderr === 'err\n', `commands.run output (${JSON.stringify(r.stdout)})`);
const e = await rejects(sbx.commands.run('exit 5'), CommandExitError, '5', 'a failing command');
check(e.exitCode === 5, 'CommandExitError carries the exit code');
const h = await sbx.commands.run('sleep 60', { background: true });
check(h.pid > 1, `background command (pid ${h.pid})`);
check((await sbx.commands.list()).some((p) => p.pid === h.pid), 'commands.list() shows it');
check((await h.kill()) === true, 'handle.kill()');
const c = await sbx.commands.run('cat', { background: true, stdin: true });
await sbx.commands.sendStdin(c.pid, 'from js\n');
await sbx.commands.closeStdin(c.pid);
check((await c.wait()).stdout === 'from js\n', 'stdin reaches the command');
await sbx.files.write('js/a.txt', 'text');
check((await sbx.files.read('js/a.txt')) === 'text', 'files.write/read text');
const bytes = new Uint8Array([0, 1, 2, 250, 255]);
await sbx.files.write('js/b.bin', bytes.buffer);
const back = await sbx.files.read('js/b.bin', { format: 'bytes' });
check(Buffer.from(back).equals(Buffer.from(bytes)), 'files.write/read bytes');
const names = (await sbx.files.list('js')).map((x) => x.name).sort();
check(names.join(',') === 'a.txt,b.bin', `files.list (${names})`);
const info = await sbx.files.getInfo('js/a.txt');
check(info.modifiedTime instanceof Date && !Number.isNaN(info.modifiedTime.getTime()), 'files.getInfo parses the modified time');
check((await sbx.files.makeDir('js/d')) === true, 'files.makeDir');
await sbx.files.remove('js');
check((await sbx.files.exists('js')) === false, 'files.remove');
await sbx.setTimeout(600_000);
const ids = (await Sandbox.list().nextItems()).map((s) => s.sandboxId);
check(ids.includes(sbx.sandboxId), 'Sandbox.list()');
await rejects(sbx.pause(), SandboxError, 'not supported', 'pause()');
await sbx.kill();
check(!(await Sandbox.list().nextItems()).some((s) => s.sandboxId === sbx.sandboxId), 'kill() ends it: gone from Sandbox.list()');
console.log(`e2b-check.mjs: ${checks} checks passed against ${base}`);
