// The shipped presets, booted: one image with console and ssh-server (the test image's
// configuration, whose kernel modules include virtio_net), booted in QEMU with user networking
// and a host port forward, and logged into the way a user would: the real OpenSSH client, with
// the key the preset installed for MKMA_SSH_USER, running a command. The host keys are made at
// first boot: none are in the base, and the key the client was shown is the one the guest made.
// Part of `npm test`: the build starts from the test image's bootstrap and is the one
// test/integration/presets.test.ts checks (test/helpers/shipped-presets.ts), whichever of the two
// runs first makes it. Alone: `npm run test:presets`.
import { afterAll, describe, expect, test } from '@jest/globals';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { describeSmoke, type SmokeResult } from '../../qemu/smoke.js';
import { MULTI_USER_MARKER } from '../../qemu/run.js';
import { sleep, startGuestBoot } from '../helpers/guest-boot.js';
import { WORK } from '../helpers/paths.js';
import { baseNames, buildShippedPresets, SHIPPED_OUT as OUT, SSH_KEY as KEY, SSH_USER as USER } from '../helpers/shipped-presets.js';

const DIR = path.join(WORK, 'presets-boot');

/** A free TCP port on the loopback interface for the forward. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** ssh with the key the preset installed; never asks, never touches ~/.ssh. */
function ssh(port: number, command: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const args = [
    '-i',
    KEY,
    '-p',
    String(port),
    '-o',
    'BatchMode=yes',
    '-o',
    'IdentitiesOnly=yes',
    '-o',
    'StrictHostKeyChecking=accept-new',
    '-o',
    `UserKnownHostsFile=${path.join(DIR, 'known_hosts')}`,
    '-o',
    'ConnectTimeout=20',
    '-o',
    'LogLevel=ERROR',
    `${USER}@127.0.0.1`,
    command,
  ];
  return new Promise((resolve) => {
    const c = spawn('ssh', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => c.kill('SIGKILL'), 90_000);
    c.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout, stderr });
    });
  });
}

describe('the shipped presets boot (console + ssh-server, QEMU TCG, user networking)', () => {
  let smoke: SmokeResult | undefined;
  afterAll(() => {
    if (smoke) process.stderr.write(`\n[presets-boot] ${describeSmoke(smoke)}\n`);
  });

  test('ssh logs in with the key the preset installed and runs a command; host keys made at first boot', async () => {
    fs.mkdirSync(DIR, { recursive: true });
    fs.rmSync(path.join(DIR, 'known_hosts'), { force: true });
    const build = buildShippedPresets();
    const buildSecs = build.seconds;
    expect(build.stderr).not.toMatch(/^mkma: /m);
    expect(build.status).toBe(0);
    // openssh-server's installation made host keys in the chroot: none may reach the image
    expect(baseNames(OUT).filter((f) => /^etc\/ssh\/ssh_host_/.test(f))).toEqual([]);

    // what the guest shows on its console once the client is done (/tmp/mkma-ssh-done)
    const port = await freePort();
    const boot = startGuestBoot({
      dir: DIR,
      out: OUT,
      runSh: [
        'i=0',
        'while [ ! -e /tmp/mkma-ssh-done ] && [ "$i" -lt 300 ]; do sleep 1; i=$((i + 1)); done',
        'echo "ssh-done: $(cat /tmp/mkma-ssh-done 2>/dev/null || echo never)"',
        'echo "hostkey: $(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)"',
        'echo "hostkeys-unit: $(systemctl is-active mkma-ssh-host-keys.service)"',
        'echo "locale: $(grep ^LANG= /etc/default/locale)"',
        'echo "editor: $(readlink -f /etc/alternatives/editor)"',
      ],
      timeoutSec: 600,
      extraArgs: ['-nic', `user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:${port}-:22`],
    });
    const t1 = boot.started;

    // multi-user reached, then sshd (and DHCP) may still be a moment behind: retry the login
    await boot.waitFor(MULTI_USER_MARKER);
    const multiUserSecs = (Date.now() - t1) / 1000;
    let login = { status: null as number | null, stdout: '', stderr: 'the guest ended before multi-user' };
    for (let attempt = 0; attempt < 40 && !boot.ended(); attempt++) {
      login = await ssh(port, 'echo "user=$(id -un) host=$(hostname) root=$(sudo -n id -u)"; echo ok > /tmp/mkma-ssh-done');
      if (login.status === 0) break;
      await sleep(3000);
    }
    const loginSecs = (Date.now() - t1) / 1000;
    smoke = await boot.result;
    process.stderr.write(
      `[presets-boot] build ${buildSecs.toFixed(0)} s (${build.seeded}, bootstrap ${build.stages[0]?.status}), multi-user ${multiUserSecs.toFixed(0)} s and ssh login ${loginSecs.toFixed(0)} s after QEMU started, boot total ${smoke.durationSec.toFixed(0)} s\n`,
    );
    expect({ status: login.status, stdout: login.stdout, stderr: login.stderr }).toEqual({
      status: 0,
      stdout: `user=${USER} host=mkma-test root=0\n`,
      stderr: '',
    });
    expect(smoke.reason).toBe(smoke.ok ? smoke.reason : 'passed');
    expect(smoke.log).toMatch(/MKMA-TEST-OUT: ssh-done: ok/);
    expect(smoke.log).toMatch(/MKMA-TEST-OUT: hostkeys-unit: active/);
    expect(smoke.log).toMatch(/MKMA-TEST-OUT: locale: LANG=en_US\.UTF-8/);
    expect(smoke.log).toMatch(/MKMA-TEST-OUT: editor: \/usr\/bin\/vim\.tiny/);
    // the host key the client accepted is the one the guest made at this boot
    const guestKey = /MKMA-TEST-OUT: hostkey: \d+ (SHA256:\S+)/.exec(smoke.log)?.[1];
    const seen = spawnSync('ssh-keygen', ['-lf', path.join(DIR, 'known_hosts')], { encoding: 'utf8' }).stdout;
    expect(guestKey).toBeDefined();
    expect(seen).toContain(guestKey!);
    // the next run boots a fresh machine with new host keys
    fs.rmSync(path.join(DIR, 'known_hosts'), { force: true });
  }, 1_800_000);
});
