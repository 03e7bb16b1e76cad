/**
 * Node-only parts of herald-client: `FileDeviceStore`. Everything of the main entry is
 * re-exported, so a Node program imports from `herald-client/node` alone.
 */
import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { DeviceStore } from "./device.js";

export * from "./index.js";

/**
 * Keeps the device id in `<dir>/herald-device`, so a restarted process keeps its device and
 * its inbox cursor. Two processes of one service use two directories (two devices).
 */
export class FileDeviceStore implements DeviceStore {
  readonly path: string;

  constructor(dir: string) {
    if (typeof dir !== "string" || dir === "") throw new TypeError("FileDeviceStore needs a directory");
    this.path = join(dir, "herald-device");
  }

  async load(): Promise<string | null> {
    try {
      const s = (await readFile(this.path, "utf8")).trim();
      return s === "" ? null : s;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw e;
    }
  }

  async save(device: string): Promise<void> {
    await mkdir(join(this.path, ".."), { recursive: true });
    const tmp = `${this.path}.tmp`;
    await writeFile(tmp, device);
    await rename(tmp, this.path);
  }
}
