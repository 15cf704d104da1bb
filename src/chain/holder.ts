/**
 * Which chain new messages use, and when an old one may be stopped. A reload swaps in a new
 * chain; every connection keeps the chain it holds until its current message ends, then moves
 * to the new one. When no connection holds a retired chain any more, its `onRetired` runs
 * (the daemon stops the plugins only that chain used).
 * @module
 */
import type { Chain } from './chain.ts';

/** The current chain plus the retired ones still in use. */
export class ChainHolder {
  #current: Chain;
  readonly #refs = new Map<Chain, number>();
  readonly #retired = new Map<Chain, () => unknown>();

  constructor(chain: Chain) {
    this.#current = chain;
  }

  /** The chain new connections and new messages get. */
  get current(): Chain {
    return this.#current;
  }

  /** Chains swapped out whose users have not all moved on yet. */
  get draining(): number {
    return this.#retired.size;
  }

  /** Takes a reference to the current chain; give it back with `release`. */
  acquire(): Chain {
    const c = this.#current;
    this.#refs.set(c, (this.#refs.get(c) ?? 0) + 1);
    return c;
  }

  /** Gives back a reference taken with `acquire`. */
  release(chain: Chain): void {
    const n = (this.#refs.get(chain) ?? 0) - 1;
    if (n > 0) {
      this.#refs.set(chain, n);
      return;
    }
    this.#refs.delete(chain);
    this.#finish(chain);
  }

  /** Makes `next` the current chain; `onRetired` runs once the old one is no longer in use. */
  swap(next: Chain, onRetired?: () => unknown): void {
    const old = this.#current;
    if (old === next) return;
    this.#current = next;
    if (onRetired !== undefined) this.#retired.set(old, onRetired);
    if (!this.#refs.has(old)) this.#finish(old);
  }

  #finish(chain: Chain): void {
    if (chain === this.#current) return;
    const done = this.#retired.get(chain);
    if (done === undefined) return;
    this.#retired.delete(chain);
    done();
  }
}
