// The unit that marks a boot good (boot counting, docs/FORMAT.md "Layer names and states"):
// once the system reached multi-user, the layers the init applied on trial are renamed to
// active by `mkma layers bless --booted`. A boot that never gets there leaves them on trial,
// one try fewer; after their last try the init skips them. Installed with mkma itself (the
// layers on trial come from mkma persist, which needs it).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { RUNTIME } from '../lib/contract.js';

export const BOOT_GOOD_UNIT_NAME = 'mkma-boot-good.service';

export const BOOT_GOOD_UNIT = `[Unit]
Description=mkma: mark this boot good (layers on trial become active)
After=multi-user.target
ConditionPathExists=${RUNTIME.layersRecord}

[Service]
Type=oneshot
ExecStart=/usr/local/bin/mkma layers bless --booted --quiet

[Install]
WantedBy=multi-user.target
`;

/**
 * Where the unit lives in the image: with the units of packages, not in /etc/systemd/system,
 * which is the administrator's (`systemctl mask` and `systemctl edit` write there, and mask
 * refuses with "File exists" when the unit itself is in /etc).
 */
export const BOOT_GOOD_UNIT_DIR = '/usr/lib/systemd/system';

/** Writes the unit into the image and enables it (the symlink systemctl enable would make). */
export function installBootGoodUnit(chroot: string): void {
  const unitDir = path.join(chroot, BOOT_GOOD_UNIT_DIR);
  const wants = path.join(chroot, 'etc/systemd/system/multi-user.target.wants');
  fs.mkdirSync(unitDir, { recursive: true });
  fs.mkdirSync(wants, { recursive: true });
  fs.writeFileSync(path.join(unitDir, BOOT_GOOD_UNIT_NAME), BOOT_GOOD_UNIT, { mode: 0o644 });
  // a tree configured by an earlier mkma has the unit in /etc/systemd/system, where it would
  // shadow this one: removed when it is mkma's (a mask, a symlink, or an edited file stays)
  const old = path.join(chroot, 'etc/systemd/system', BOOT_GOOD_UNIT_NAME);
  const st = fs.lstatSync(old, { throwIfNoEntry: false });
  if (st?.isFile() && fs.readFileSync(old, 'utf8') === BOOT_GOOD_UNIT) fs.rmSync(old);
  const link = path.join(wants, BOOT_GOOD_UNIT_NAME);
  fs.rmSync(link, { force: true });
  fs.symlinkSync(`${BOOT_GOOD_UNIT_DIR}/${BOOT_GOOD_UNIT_NAME}`, link);
}
