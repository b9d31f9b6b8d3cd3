import type { Shape } from './shapes';
import { area, Circle as C } from "../geometry/circle";

export interface Drawable {
  draw(ctx: Context): void;
  readonly id: string;
}

export type Id = string | number;

export enum Color { Red, Green }

export abstract class Renderer implements Drawable {
  abstract draw(ctx: Context): void;
  protected scale(value: number): number {
    return value * 2;
  }
  readonly id = "r";
}

declare function log(message: string): void;

export function total(shapes: Shape[]): number {
  return shapes.reduce((sum, s) => sum + area(s), 0);
}

namespace Internal {
  export const version = 1;
}
