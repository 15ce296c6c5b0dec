// `npm test` on its own: the tests compare against golden outputs of the Python runtime. Build them into
// test/.fixtures when missing (needs the Python package: `pip install -e ".[all]"` in the repo root).
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const fix = process.env.QWEN_EDGE_JS_FIXTURES || path.join(here, "..", "test", ".fixtures");
if (!fs.existsSync(path.join(fix, "golden.json"))) {
  console.error(`building the golden fixtures in ${fix} (python scripts/js_fixtures.py) ...`);
  const python = process.env.PYTHON || "python3";
  const r = spawnSync(python, [path.join(here, "..", "..", "scripts", "js_fixtures.py"), fix], { stdio: "inherit" });
  if (r.status !== 0) {
    console.error("error: could not build the fixtures; first run `pip install torch==2.13.0 && pip install -e \".[all]\"` " +
      "in the repository root (or `bash scripts/test.sh`, which does it all)");
    process.exit(2);
  }
}
