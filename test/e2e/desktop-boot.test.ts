// The shipped desktop preset, booted: Xorg, Openbox and XDM on the test image's configuration
// (starting from its bootstrap: test/helpers/seed-out.ts), booted in QEMU with `-vga std`, no
// display window, and `vga=0x344` on the kernel command line: the firmware's 1024x768 VESA
// framebuffer at 32 bits per pixel (vesafb is built into Debian's kernel; the test image keeps
// no DRM driver). Not vga=0x318: that VESA mode is 24 bits per pixel on QEMU's VGA BIOS
// (SeaVGABIOS; 0x144 is its 1024x768x32), and Xorg 21's fbdev driver cannot use a 24-bpp
// framebuffer ("FBIOPUT_VSCREENINFO succeeded but modified mode", -fbbpp 24 too), so XDM's
// server died three times and XDM gave up (its unit then ends "inactive", not failed). The
// boot reaches graphical.target: display-manager.service (XDM) is active, its X server runs on
// that framebuffer and answers a client, XDM's login box (the "xlogin" window) is mapped, and
// a screendump through QEMU's monitor protocol taken then is not black; it is written as
// .test-work/desktop-boot/screen.png (path printed) to look at.
//
// Measured on the 2-core development machine (2026-12-02, TCG, other jobs running):
// - bootstrap: the test image's mmdebstrap, 146 s; shared with the e2e project and reused
//   by later runs (an unchanged rebuild 0.5 s);
// - build: the four desktop presets on a copy of that tree (apt: Xorg, Openbox, xterm, XDM),
//   the base packed and the initramfs: 93-128 s; 1 s when nothing changed. base.cpio.zst
//   218 MiB (691 MiB, 17.9k entries in RAM; the test image's is 84 MiB); the build directory
//   takes 3.4 GiB: OUT/chroot 694 MiB, the four preset snapshots 2.2 GiB (ext4: full copies),
//   apt lists 88 MiB, QEMU's disks 239 MiB;
// - boot: base unpacked in 16-28 s, multi-user at 61-77 s of uptime, X already answering
//   then, the login box 5 s later; 105-139 s from QEMU's start to its power-off (the guest
//   waits 20 s for the screendump). The whole `npm run test:desktop`: 178 s with the build
//   reused, 230 s with the presets run.
// Not part of `npm test` and CI (jest.config.js leaves it out unless MKMA_DESKTOP_BOOT=1):
// those minutes, apt downloads of Xorg at every preset change, 2.2 GiB of snapshots and a
// 3 GiB guest on top of a CI run that already takes its whole 45 minutes. Run it with
// `npm run test:desktop` after a change to the desktop preset, the init or the boot.
import { afterAll, describe, expect, test } from '@jest/globals';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describeSmoke, type SmokeResult } from '../../qemu/smoke.js';
import { sleep, startGuestBoot } from '../helpers/guest-boot.js';
import { MKMA, REPO, TEST_CONFIG, WORK } from '../helpers/paths.js';
import { ppmStats, ppmToPng, qmp, qmpSocketReady } from '../helpers/qmp.js';
import { seedFromTestImage } from '../helpers/seed-out.js';

const DIR = path.join(WORK, 'desktop-boot');
const OUT = path.join(DIR, 'out');
const USER = 'mkmadesk';
// `openssl passwd -6 -salt mkmadesk mkma`: the user's password is "mkma"
const PASSWORD = '$6$mkmadesk$CT1zexr6EceUUF7IXl51taKoENwb4L/qWGTFzGOvfPpHPGsnx5TGa5NrBwss0ln3rzw8F4MWDzd6gdDoaHbNK0';
const READY = 'MKMA-TEST-OUT: x-ready';

describe('the shipped desktop preset boots to its display manager (QEMU TCG, std VGA, VESA framebuffer)', () => {
  let smoke: SmokeResult | undefined;
  afterAll(() => {
    if (smoke) process.stderr.write(`\n[desktop-boot] ${describeSmoke(smoke)}\n`);
  });

  test('display-manager.service (XDM) is active, X answers on the VESA framebuffer, the screen is not black', async () => {
    fs.mkdirSync(DIR, { recursive: true });
    // the test image's configuration under another hostname (not part of the configuration hash)
    const config = path.join(DIR, 'mkma.toml');
    fs.writeFileSync(config, fs.readFileSync(TEST_CONFIG, 'utf8').replace(/^hostname = .*$/m, 'hostname = "mkma-desktop"'));

    const t0 = Date.now();
    const seeded = seedFromTestImage(OUT);
    const build = spawnSync(
      process.execPath,
      [MKMA, 'build', '--config', config, '--out', OUT, '--json', '--preset', path.join(REPO, 'presets/desktop')],
      {
        encoding: 'utf8',
        env: { ...process.env, MKMA_QEMU_TEST: '', MKMA_DESKTOP_USER: USER, MKMA_DESKTOP_PASSWORD: PASSWORD },
        timeout: 2_400_000,
        maxBuffer: 64 << 20,
      },
    );
    const buildSecs = (Date.now() - t0) / 1000;
    expect(build.stderr).not.toMatch(/^mkma: /m);
    expect(build.status).toBe(0);
    const baseBytes = fs.statSync(path.join(OUT, 'base.cpio.zst')).size;

    // in the guest, after multi-user: wait for the display manager and its X server, say so,
    // leave the host time for its screendump, then report
    const sock = path.join(DIR, 'qmp.sock');
    fs.rmSync(sock, { force: true });
    const boot = startGuestBoot({
      dir: DIR,
      out: OUT,
      runSh: [
        'i=0',
        'until [ "$(systemctl is-active display-manager.service)" = active ] && pgrep -x Xorg >/dev/null &&',
        '  auth=$(ls /var/lib/xdm/authdir/authfiles/A:0-* 2>/dev/null | head -n 1) && [ -n "$auth" ] &&',
        '  XAUTHORITY=$auth xdpyinfo -display :0 >/tmp/xdpyinfo 2>&1 || [ "$i" -ge 400 ] ||',
        // XDM gives up after its server died three times: no need to wait out the 400 s then
        '  grep -q "session disabled" /var/log/xdm.log 2>/dev/null; do sleep 1; i=$((i + 1)); done',
        'echo "waited: $i s"',
        // then for XDM's login box (the Xt shell "xlogin"), mapped on the root window: drawn
        // after the server answers, so a screendump right then is still black
        'j=0',
        'until [ -z "$auth" ] || XAUTHORITY=$auth xwininfo -root -children -display :0 2>/dev/null | grep -qi xlogin || [ "$j" -ge 120 ]; do',
        '  sleep 1; j=$((j + 1))',
        'done',
        'echo "login window: $(XAUTHORITY=$auth xwininfo -root -children -display :0 2>&1 | grep -i -m1 xlogin) after $j s"',
        'echo "x-ready"',
        // the host's screendump comes now
        'sleep 20',
        'echo "dm: $(systemctl is-active display-manager.service) $(readlink -f /etc/systemd/system/display-manager.service)"',
        'echo "default: $(systemctl get-default)"',
        'echo "xorg: $(ps -o user=,args= -C Xorg)"',
        'echo "screen: $(grep -m1 dimensions: /tmp/xdpyinfo)"',
        'echo "driver: $(grep -m1 -o -E "(FBDEV|modeset)\\(0\\): [^,]*" /var/log/Xorg.0.log)"',
        'echo "fb: $(cat /sys/class/graphics/fb0/name)"',
        'echo "errors: $(grep -c "^\\[ *[0-9.]*\\] (EE)" /var/log/Xorg.0.log)"',
        'echo "failed: $(systemctl --failed --plain --no-legend | wc -l)"',
        // why, when X did not come up: XDM's log and the X server's errors
        '[ -s /tmp/xdpyinfo ] && grep -q dimensions: /tmp/xdpyinfo && [ "$j" -lt 120 ] ||',
        '  { tail -n 5 /var/log/xdm.log; grep -E "\\((EE|WW)\\)" /var/log/Xorg.0.log | tail -n 15;',
        '    XAUTHORITY=$auth xwininfo -root -children -display :0 2>&1 | tail -n 8; } | sed "s/^/why: /"',
      ],
      timeoutSec: 1200,
      memoryMiB: 3072,
      append: 'vga=0x344',
      extraArgs: ['-vga', 'std', '-qmp', `unix:${sock},server=on,wait=off`],
    });
    await boot.waitFor(READY);
    const readySecs = (Date.now() - boot.started) / 1000;
    const ppm = path.join(DIR, 'screen.ppm');
    const png = path.join(DIR, 'screen.png');
    let dumped: unknown = 'the guest ended before X was ready';
    if (!boot.ended() && (await qmpSocketReady(sock))) {
      // the login box is drawn a moment after the server answers
      await sleep(5000);
      fs.rmSync(ppm, { force: true });
      dumped = await qmp(sock, 'screendump', { filename: ppm }).then(
        () => 'ok',
        (e: Error) => e.message,
      );
    }
    smoke = await boot.result;
    const out = (key: string) => new RegExp(`MKMA-TEST-OUT: ${key}: (.*)`).exec(smoke!.log)?.[1] ?? '';
    const screen = dumped === 'ok' ? ppmStats(ppm) : null;
    // the same picture as a PNG, to look at (the checks below read the PPM)
    fs.rmSync(png, { force: true });
    if (screen) ppmToPng(ppm, png);
    process.stderr.write(
      `[desktop-boot] build ${buildSecs.toFixed(0)} s (${seeded}, base ${(baseBytes / 2 ** 20).toFixed(1)} MiB), X ready ${readySecs.toFixed(0)} s ` +
        `after QEMU started (${out('waited')} after multi-user), boot total ${smoke.durationSec.toFixed(0)} s; ` +
        `screen ${screen ? `${screen.width}x${screen.height}, ${(screen.nonBlack * 100).toFixed(1)} % not black, ${screen.colours} colours: ${png}` : dumped}\n`,
    );
    const why = [...smoke.log.matchAll(/MKMA-TEST-OUT: why: (.*)/g)].map((m) => `  ${m[1]}`);
    if (why.length) process.stderr.write(`[desktop-boot] X did not come up:\n${why.join('\n')}\n`);
    expect(smoke.reason).toBe(smoke.ok ? smoke.reason : 'passed');
    expect(smoke.log).toContain(READY);
    expect(out('dm')).toBe('active /usr/lib/systemd/system/xdm.service');
    expect(out('default')).toBe('graphical.target');
    expect(out('xorg')).toMatch(/^root +\S*Xorg :0 .*vt7/);
    expect(out('screen')).toMatch(/dimensions: +\d+x\d+ pixels/);
    expect(out('driver')).toMatch(/^(FBDEV|modeset)\(0\): /);
    expect(out('fb')).toBe('VESA VGA');
    expect(out('login window')).toMatch(/xlogin/i);
    expect(out('failed')).toBe('0');
    expect(dumped).toBe('ok');
    // XDM's login box on the root window: a good part of the screen lit, in more than one colour
    expect(screen!.nonBlack).toBeGreaterThan(0.02);
    expect(screen!.colours).toBeGreaterThan(1);
  }, 2_700_000);
});
