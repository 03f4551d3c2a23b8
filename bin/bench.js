#!/usr/bin/env node
// Launcher of `npm run bench` (bench/main.ts, compiled to dist/bench by tsc).
import('../dist/bench/main.js');
