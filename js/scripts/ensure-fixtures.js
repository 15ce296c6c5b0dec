// `npm test` on its own: the tests compare against golden outputs of the Python runtime. Build them into
// test/.fixtures when missing (needs the Python package: `pip install -e ".[all]"` in the repo root).
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const fix = process.env.QWEN_EDGE_JS_FIXTURES || path.join(here, "..", "test", ".fixtures");
// The fixtures' version is FIXTURES_VERSION in tests/js_fixtures.py: older fixtures are rebuilt.
const script = path.join(here, "..", "..", "tests", "js_fixtures.py");
const want = (/^FIXTURES_VERSION = (\d+)/m.exec(fs.readFileSync(script, "utf8")) || [])[1];
const have = fs.existsSync(path.join(fix, "VERSION")) ? fs.readFileSync(path.join(fix, "VERSION"), "utf8").trim() : "";
if (!fs.existsSync(path.join(fix, "golden.json")) || have !== want) {
  console.error(`building the golden fixtures in ${fix} (python tests/js_fixtures.py) ...`);
  const python = process.env.PYTHON || "python3";
  const r = spawnSync(python, [script, fix], { stdio: "inherit" });
  if (r.status !== 0) {
    console.error("error: could not build the fixtures; first run `pip install torch==2.13.0 && pip install -e \".[all]\"` " +
      "in the repository root (or `bash scripts/test.sh`, which does it all)");
    process.exit(2);
  }
}
