// QEMU's machine protocol (QMP) on a unix socket, for what a test asks of a running guest's
// QEMU: `-qmp unix:PATH,server=on,wait=off` on its command line, then `qmp(PATH, command, args)`.
// One connection per command: the greeting, qmp_capabilities, the command, its return.
import * as fs from 'node:fs';
import * as net from 'node:net';

export function qmp(socket: string, execute: string, args: Record<string, unknown> = {}, timeoutMs = 30_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const c = net.createConnection(socket);
    const timer = setTimeout(() => {
      c.destroy();
      reject(new Error(`QMP ${execute}: no answer in ${timeoutMs} ms`));
    }, timeoutMs);
    let buf = '';
    let step = 0;
    const finish = (err: Error | null, value?: unknown) => {
      clearTimeout(timer);
      c.end();
      if (err) reject(err);
      else resolve(value);
    };
    c.on('error', (e) => finish(e));
    c.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as { QMP?: unknown; return?: unknown; error?: { desc: string }; event?: string };
        if (msg.event) continue;
        if (msg.error) return finish(new Error(`QMP ${step === 1 ? 'qmp_capabilities' : execute}: ${msg.error.desc}`));
        if (msg.QMP && step === 0) {
          step = 1;
          c.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
        } else if (step === 1) {
          step = 2;
          c.write(JSON.stringify({ execute, arguments: args }) + '\n');
        } else if (step === 2) {
          return finish(null, msg.return);
        }
      }
    });
  });
}

/** Waits until QEMU has made its QMP socket (it is created as QEMU starts). */
export async function qmpSocketReady(socket: string, timeoutMs = 60_000): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (fs.existsSync(socket)) return true;
    await new Promise((r) => setTimeout(r, 200));
  }
  return false;
}

/** A binary PPM (P6, maxval 255, as QEMU's screendump writes it): size and the share of pixels that are not black. */
export function ppmStats(file: string): { width: number; height: number; nonBlack: number; colours: number } {
  const data = fs.readFileSync(file);
  // header: P6 <ws> width <ws> height <ws> maxval <one ws>, then width*height RGB triples
  const m = /^P6\s+(\d+)\s+(\d+)\s+(\d+)\s/.exec(data.subarray(0, 64).toString('latin1'));
  if (!m || m[3] !== '255') throw new Error(`${file}: not a binary PPM with maxval 255`);
  const width = Number(m[1]);
  const height = Number(m[2]);
  const start = m[0].length;
  let lit = 0;
  const seen = new Set<number>();
  for (let i = start; i + 2 < data.length; i += 3) {
    const rgb = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
    if (rgb !== 0) lit++;
    if (seen.size < 4096) seen.add(rgb);
  }
  return { width, height, nonBlack: lit / (width * height), colours: seen.size };
}
