/**
 * Stops native work before the process exits. Deno unloads the core library while its runtime
 * shuts down; a thread still running inside it (an idle session's thread pool, the I/O ring's
 * readers) then crashes the process with SIGSEGV after the program's own output. Handles the
 * program did not close are closed on "unload": sessions first (they use their model), then models.
 *
 * @module
 */

/** Something with native threads or memory behind it. */
export interface Closable {
  close(): void;
}

/** Phase 0: sessions; phase 1: models. Weak: a dropped handle is left to its finalizer. */
const phases: [Set<WeakRef<Closable>>, Set<WeakRef<Closable>>] = [new Set(), new Set()];
let listening = false;

function closeAll(): void {
  for (const set of phases) {
    for (const ref of set) {
      try {
        ref.deref()?.close();
      } catch {
        // Busy: an evaluation still in flight at exit; nothing more can be done for it.
      }
    }
    set.clear();
  }
}

/**
 * Closes `handle` at exit unless it was closed before.
 *
 * @param handle A session or model.
 * @param phase 0 for sessions, 1 for models (closed after every session).
 * @returns A function to call when the handle is closed, so it is forgotten.
 */
export function closeAtExit(handle: Closable, phase: 0 | 1): () => void {
  if (!listening) {
    globalThis.addEventListener("unload", closeAll);
    listening = true;
  }
  const ref = new WeakRef(handle);
  phases[phase].add(ref);
  return () => void phases[phase].delete(ref);
}
