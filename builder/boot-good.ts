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

/** Writes the unit into the image and enables it (the symlink systemctl enable would make). */
export function installBootGoodUnit(chroot: string): void {
  const unitDir = path.join(chroot, 'etc/systemd/system');
  const wants = path.join(unitDir, 'multi-user.target.wants');
  fs.mkdirSync(wants, { recursive: true });
  fs.writeFileSync(path.join(unitDir, BOOT_GOOD_UNIT_NAME), BOOT_GOOD_UNIT, { mode: 0o644 });
  const link = path.join(wants, BOOT_GOOD_UNIT_NAME);
  fs.rmSync(link, { force: true });
  fs.symlinkSync(`/etc/systemd/system/${BOOT_GOOD_UNIT_NAME}`, link);
}
