// The node driver (bin/aci-node.js, docs/NODE.md) as the mixed-fleet harness drives it.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startRedis } from './redis-server.js';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'aci-node.js');
let srv;
before(async () => {
  srv = await startRedis();
});
after(async () => {
  await srv.stop();
});

function driver(args) {
  const child = spawn(process.execPath, [BIN, '--redis', srv.url, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  const lines = [];
  const waiting = [];
  readline.createInterface({ input: child.stdout }).on('line', (l) => {
    const w = waiting.shift();
    if (w) w(JSON.parse(l));
    else lines.push(JSON.parse(l));
  });
  const next = () => (lines.length ? Promise.resolve(lines.shift()) : new Promise((r) => waiting.push(r)));
  const cmd = (line) => {
    child.stdin.write(`${line}\n`);
    return next();
  };
  const exited = new Promise((r) => child.on('exit', (code) => r(code)));
  return { child, next, cmd, exited };
}

test('ready line, commands, answers in order, quit', async () => {
  const d = driver(['--namespace', 'drv', '--tick-ms', '100', '--instance-id', 'js-node-1']);
  assert.deepEqual(await d.next(), { ready: true, instance_id: 'js-node-1', host: 'js', protocol: 2 });
  assert.equal(await srv.client().get('aci::drv:controller'), 'js-node-1', 'auto: took the lease');
  assert.deepEqual(await d.cmd('set a 1'), { ok: true });
  assert.deepEqual(await d.cmd('get a'), { value: '1' });
  assert.deepEqual(await d.cmd('set b 2 50'), { ok: true });
  await new Promise((r) => setTimeout(r, 80));
  assert.deepEqual(await d.cmd('get b'), { value: null });
  assert.deepEqual(await d.cmd('del a'), { ok: true });
  assert.deepEqual(await d.cmd('get a'), { value: null });
  assert.match((await d.cmd('strategy')).strategy, /^(ttl|batched|eager)$/);
  assert.ok('error' in (await d.cmd('frobnicate')));
  const s = await d.cmd('stats');
  for (const f of ['reads', 'l1_hits', 'l1_misses', 'writes', 'messages_sent', 'pubsub_received', 'messages_received',
    'invalidations_applied', 'gaps', 'malformed', 'is_controller', 'strategy']) {
    assert.ok(f in s, f);
  }
  assert.equal(s.is_controller, true);
  assert.equal(s.writes, 2);
  assert.ok(s.pubsub_received >= 1);
  assert.deepEqual(await d.cmd('quit'), { bye: true });
  assert.equal(await d.exited, 0);
  assert.equal(await srv.client().exists('aci::drv:controller'), 0, 'the lease was released');
});

test('SIGTERM shuts down gracefully', async () => {
  const d = driver(['--namespace', 'drv2']);
  assert.equal((await d.next()).ready, true);
  assert.equal(await srv.client().exists('aci::drv2:controller'), 1);
  d.child.kill('SIGTERM');
  assert.equal(await d.exited, 0);
  assert.equal(await srv.client().exists('aci::drv2:controller'), 0);
});

test('a bad flag: one line on stderr, exit code 2', () => {
  for (const args of [['--role', 'boss'], ['--namespace', 'a:b'], ['--tick-ms', '0'], ['--bogus', '1'], ['--strategy'],
    ['--policy-public-key', 'AB'.repeat(32)], ['--policy-allow-hashes', 'abc'], ['--policy-rollback-faults', '0']]) {
    const r = spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8' });
    assert.equal(r.status, 2, args.join(' '));
    assert.equal(r.stdout, '');
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  }
});

test('policy flags: trust, the policy fields of stats, the policy command', async () => {
  const key = 'ab'.repeat(32);
  const d = driver(['--namespace', 'drv3', '--instance-id', 'js-node-3', '--policy-allow-hashes', `${key},${'cd'.repeat(32)}`,
    '--policy-rollback-faults', '2']);
  assert.equal((await d.next()).ready, true);
  const s = await d.cmd('stats');
  assert.equal(s.policy, 'adaptive');
  assert.match(s.policy_sha256, /^[0-9a-f]{64}$/);
  assert.equal(s.policy_origin, 'local');
  assert.equal(s.policy_faults, 0);
  const p = await d.cmd('policy');
  assert.equal(p.id, 'js-node-3');
  assert.equal(p.host, 'js');
  assert.equal(p.trust, 'allow-list');
  assert.equal(p.sha256, s.policy_sha256);
  const status = JSON.parse(await srv.client().get('aci::drv3:policy:status:js-node-3'));
  assert.equal(status.id, 'js-node-3');
  assert.deepEqual(await d.cmd('quit'), { bye: true });
  assert.equal(await d.exited, 0);
  assert.equal(await srv.client().exists('aci::drv3:policy:status:js-node-3'), 0, 'the status record goes at stop');
});
