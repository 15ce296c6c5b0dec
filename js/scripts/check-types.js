// types/index.d.ts is written by hand; this check keeps it true to src/. TypeScript generates declarations
// from the JavaScript (allowJs), and for every class the package exports (Model, Chat, TextStream) the
// hand-written declaration must name the same public methods, and each method's options object the same
// keys (a method that takes `{ addGenerationPrompt, tools }` must declare both). Exits 1 with a list.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const out = fs.mkdtempSync(path.join(os.tmpdir(), "qe-types-"));
const program = ts.createProgram([path.join(root, "src/core.js")], {
  allowJs: true, declaration: true, emitDeclarationOnly: true, outDir: out, skipLibCheck: true,
  target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ES2022,
});
program.emit();
const generated = fs.readFileSync(path.join(out, "core.d.ts"), "utf8");
const handWritten = fs.readFileSync(process.argv[2] ?? path.join(root, "types/index.d.ts"), "utf8");
fs.rmSync(out, { recursive: true, force: true });

function members(text, file) {
  // class name -> method name -> option keys of its last object-literal parameter
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true);
  const classes = {};
  sf.forEachChild((node) => {
    if (!ts.isClassDeclaration(node) || !node.name) return;
    const ms = (classes[node.name.text] = {});
    for (const m of node.members) {
      if (!m.name || !ts.isIdentifier(m.name) || m.name.text.startsWith("_")) continue;
      if (m.modifiers?.some((x) => x.kind === ts.SyntaxKind.PrivateKeyword)) continue;
      if (ts.isMethodDeclaration(m)) {
        const last = m.parameters[m.parameters.length - 1];
        let keys = null;
        const t = last?.type;
        if (t && ts.isTypeLiteralNode(t)) keys = t.members.map((x) => x.name?.getText(sf)).filter(Boolean).sort();
        ms[m.name.text] = keys;
      }
    }
  });
  return classes;
}

const gen = members(generated, "core.d.ts");
const hand = members(handWritten, "index.d.ts");
const problems = [];
for (const cls of ["Model", "Chat", "TextStream"]) {
  for (const [name, keys] of Object.entries(gen[cls] ?? {})) {
    if (!(name in (hand[cls] ?? {}))) {
      problems.push(`${cls}.${name} is in src/ but not in types/index.d.ts`);
      continue;
    }
    const declared = hand[cls][name];
    if (keys && declared) {
      const missing = keys.filter((k) => !declared.includes(k));
      if (missing.length) problems.push(`${cls}.${name}(options): src/ takes ${missing.join(", ")}, the types do not declare it`);
    }
  }
  for (const name of Object.keys(hand[cls] ?? {})) {
    if (!(name in (gen[cls] ?? {}))) problems.push(`${cls}.${name} is declared but src/ has no such method`);
  }
}
if (problems.length) {
  console.error(`types/index.d.ts has drifted from src/:\n  ${problems.join("\n  ")}`);
  process.exit(1);
}
console.log(`types/index.d.ts matches src/ (${Object.values(gen).reduce((n, c) => n + Object.keys(c).length, 0)} methods checked)`);
