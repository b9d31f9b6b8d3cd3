import fetchDefault, { get as httpGet, post } from './http';
import * as path from "node:path";
const { readFile } = require('./fs-utils');
const lodash = require('lodash');

/** Adds two numbers. */
export default function add(a, b) {
  return a + b;
}

export const double = (x) => x * 2;

export class Counter extends Base {
  constructor(start) {
    super();
    this.value = start;
  }
  increment() { this.value += 1; }
  static zero = 0;
}

function* ids() {
  yield 1;
}

export { helper } from './helpers';
module.exports = { add };
