// What a figure module exports.
import type { Inputs } from './inputs.js';
import type { Row } from './report.js';

export interface Figure {
  id: number;
  title: string;
  run(inputs: Inputs): Promise<Row[]>;
}
