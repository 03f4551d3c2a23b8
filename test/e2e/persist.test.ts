// The whole loop on a real boot (QEMU, TCG): boot the test image, change things through the
// running system, `mkma persist --yes` in the guest, power off, boot again from the same disk,
// and check that the changes are there and the deletions stay deleted.
import { describe, expect, test } from '@jest/globals';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createReporter } from '../../lib/progress.js';
import { listDiskFiles } from '../../qemu/disk.js';
import { describeSmoke, IMAGES_PATH, smokeBoot } from '../../qemu/smoke.js';
import { layerInAnyState } from '../helpers/layer-names.js';
import { IMAGE_OUT } from '../helpers/paths.js';
import { ownWorkDir } from '../helpers/work-dir.js';

const CHANGES = String.raw`
set -u
mkdir -p /srv/e2e
echo new >/srv/e2e/created
echo modified >>/etc/motd
chmod 600 /etc/issue
rm /etc/issue.net
rm -rf /etc/skel
rm -rf /etc/update-motd.d && mkdir /etc/update-motd.d && echo hi >/etc/update-motd.d/99-mkma
mv /etc/debian_version /etc/debian_version.renamed
ln /srv/e2e/created /srv/e2e/created-link
ln -s /srv/e2e/created /srv/e2e/sym
echo s >"/srv/e2e/with space"
echo n >"$(printf '/srv/e2e/new\nline')"
cp /usr/bin/true /srv/e2e/captrue && setcap cap_net_bind_service+ep /srv/e2e/captrue
rm -rf /etc/profile.d && echo file >/etc/profile.d
echo junk >/tmp/should-not-persist
echo "upper entries: $(find /overlay/fresh | wc -l)"
mkma persist --yes --message "e2e persist" 2>&1
echo "persist exit: $?"
`;

const CHECKS = String.raw`
r() { printf 'check %s: %s\n' "$1" "$2"; }
r created "$(cat /srv/e2e/created)"
r motd "$(tail -n 1 /etc/motd)"
r issue-mode "$(stat -c %a /etc/issue)"
r issue.net "$(test -e /etc/issue.net && echo present || echo gone)"
r skel "$(test -e /etc/skel && echo present || echo gone)"
r update-motd.d "$(ls -A /etc/update-motd.d | tr '\n' ' ')"
r debian_version "$(test -e /etc/debian_version && echo present || echo gone) $(cat /etc/debian_version.renamed | wc -l)"
r hardlink "$(stat -c %h /srv/e2e/created) $(test /srv/e2e/created -ef /srv/e2e/created-link && echo same || echo different)"
r symlink "$(readlink /srv/e2e/sym)"
r space "$(cat '/srv/e2e/with space')"
r newline "$(cat "$(printf '/srv/e2e/new\nline')")"
r cap "$(getcap /srv/e2e/captrue)"
r profile.d "$(test -f /etc/profile.d && cat /etc/profile.d)"
r tmp "$(test -e /tmp/should-not-persist && echo present || echo gone)"
`;

describe('mkma persist in the guest, then reboot', () => {
  const dir = ownWorkDir('e2e-persist');

  test('changes saved with mkma persist --yes come back after a reboot, deletions stay deleted', async () => {
    fs.rmSync(dir, { recursive: true, force: true });
    for (const [name, script] of [
      ['boot1', CHANGES],
      ['boot2', CHECKS],
    ]) {
      fs.mkdirSync(path.join(dir, name), { recursive: true });
      fs.writeFileSync(path.join(dir, name, 'run.sh'), script);
    }
    const common = { out: IMAGE_OUT, reporter: createReporter({ quiet: true }), env: { MKMA_QEMU_ACCEL: 'tcg' }, timeoutSec: 540 };

    const first = await smokeBoot({ ...common, fresh: true, testDataDir: path.join(dir, 'boot1'), logPath: path.join(dir, 'boot1.log') });
    process.stderr.write(`\nfirst boot:\n${describeSmoke(first)}\n`);
    expect(first.ok).toBe(true);
    expect(first.log).toMatch(/MKMA-TEST-OUT: persist exit: 0/);
    expect(first.log).toMatch(/MKMA-TEST-OUT: .*persistence\.\d{8}T\d{6}Z@trial-3-0\.cpio\.zst/);
    const layers = (await listDiskFiles(first.diskPath, IMAGES_PATH)).filter((n) => n.startsWith('persistence.'));
    expect(layers).toHaveLength(1);

    const second = await smokeBoot({ ...common, fresh: false, testDataDir: path.join(dir, 'boot2'), logPath: path.join(dir, 'boot2.log') });
    process.stderr.write(`\nsecond boot:\n${describeSmoke(second)}\n`);
    expect(second.ok).toBe(true);
    // on trial: the boot spends one of its tries (a rename) before it applies it
    expect(second.log).toMatch(new RegExp(`phase layer-applied ${layerInAnyState(layers[0])}`));
    const checks = Object.fromEntries([...second.log.matchAll(/MKMA-TEST-OUT: check ([^:]+): (.*)$/gm)].map((m) => [m[1], m[2].trim()]));
    expect(checks).toEqual({
      created: 'new',
      motd: 'modified',
      'issue-mode': '600',
      'issue.net': 'gone',
      skel: 'gone',
      'update-motd.d': '99-mkma',
      debian_version: 'gone 1',
      hardlink: '2 same',
      symlink: '/srv/e2e/created',
      space: 's',
      newline: 'n',
      cap: '/srv/e2e/captrue cap_net_bind_service=ep',
      'profile.d': 'file',
      tmp: 'gone',
    });
  }, 1_200_000);
});
